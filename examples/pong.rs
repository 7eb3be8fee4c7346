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
    /// Write the receive time (wall-clock microseconds) into bytes 8..16 of each echo of 16
    /// bytes or more, for `ping --rtts` to split the round trip into its two ways.
    #[arg(long)]
    stamp: bool,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { secs, stamp, net } = Args::parse();
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
            let payload = if stamp && s.payload.len() >= 16 {
                let mut p = s.payload.to_vec();
                p[8..16].copy_from_slice(&hypha_examples::wall_micros().to_le_bytes());
                bytes::Bytes::from(p)
            } else {
                s.payload
            };
            if publisher.put(payload).await.is_err() {
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
