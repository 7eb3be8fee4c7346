//! Echoes every `bench/ping` sample back on `bench/pong` (the other half of `ping`).
//!
//! By default it answers from the subscriber's callback with `put(..).now()`: the callback runs
//! on the link's reader, so the echo goes from the socket to the socket on one thread (Zenoh's
//! `z_pong` answers from its callback too). `--stream` answers from `main` instead, through a
//! stream subscriber and `put(..).await`: one more thread hand-over per echo.
//!
//! `cargo run --release -p hypha-examples --example pong -- --listen tcp/127.0.0.1:7447`

use clap::Parser;
use hypha::Priority;
use hypha_examples::{NetArgs, init_log, run_for};
use std::sync::Arc;

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
    /// Answer from `main` (a stream subscriber and `put(..).await`) instead of the callback.
    #[arg(long)]
    stream: bool,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args {
        secs,
        stamp,
        stream,
        net,
    } = Args::parse();
    let session = hypha::open(net.config()?).await?;
    eprintln!("pong listening on {:?}", session.info().listening);
    // `ping --bulk`'s background load: taken and dropped.
    let _bulk = session.declare_subscriber("bench/bulk").callback(|_| {})?;
    let publisher = Arc::new(
        session
            .declare_publisher("bench/pong")?
            .priority(Priority::RealTime),
    );
    let echo = move |s: hypha::Sample| {
        if stamp && s.payload.len() >= 16 {
            let mut p = s.payload.to_vec();
            p[8..16].copy_from_slice(&hypha_examples::wall_micros().to_le_bytes());
            bytes::Bytes::from(p)
        } else {
            s.payload
        }
    };
    if stream {
        let sub = session
            .declare_subscriber("bench/ping")
            .capacity(1024)
            .stream()?;
        let answer = async {
            while let Some(s) = sub.recv().await {
                if publisher.put(echo(s)).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = answer => {}
            _ = run_for(secs) => {}
        }
    } else {
        let p = publisher.clone();
        let failed = Arc::new(tokio::sync::Notify::new());
        let f = failed.clone();
        let _sub = session
            .declare_subscriber("bench/ping")
            .callback(move |s| {
                if p.put(echo(s)).now().is_err() {
                    f.notify_one();
                }
            })?;
        tokio::select! {
            _ = failed.notified() => {}
            _ = run_for(secs) => {}
        }
    }
    session.close().await;
    Ok(())
}
