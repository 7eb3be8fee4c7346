//! Echoes every `bench/ping` sample back on `bench/pong` (the other half of `ping`).
//!
//! `cargo run --release -p hypha-examples --example pong -- --listen tcp/127.0.0.1:7447`

use clap::Parser;
use hypha::Priority;
use hypha_examples::{NetArgs, init_log, run_for};

/// Echoes `bench/ping` on `bench/pong`.
#[derive(Parser)]
struct Args {
    /// Run this long (0: forever).
    #[arg(long, default_value_t = 0)]
    secs: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { secs, net } = Args::parse();
    let session = hypha::open(net.config()?).await?;
    eprintln!("pong listening on {:?}", session.info().listening);
    let sub = session
        .declare_subscriber("bench/ping")
        .capacity(1024)
        .stream()?;
    // `ping --bulk`'s background load: taken and dropped.
    let _bulk = session.declare_subscriber("bench/bulk").callback(|_| {})?;
    let publisher = session
        .declare_publisher("bench/pong")?
        .priority(Priority::RealTime);
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
