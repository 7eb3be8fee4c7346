//! JetStream in its own best style, for the durable-streams comparison (issue 17):
//! `jsbench ingest N SIZE MODE [INFLIGHT]` publishes N samples of SIZE bytes on 100 subjects of
//! a file-backed stream (single replica) and prints one JSON line:
//! - MODE `acked`: JetStream publish with acknowledgements, INFLIGHT (default 5,000) in flight;
//! - MODE `fire`: core NATS publish (no ack), timed until the stream holds N;
//!   then `jsbench replay N`: an ordered consumer reads the whole stream, timed to the last.
//! The server is started by `../durable_js.sh` (its RSS and disk are measured there).

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Instant;

const STREAM: &str = "BENCH";

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await.context("connect")?;
    let js = jetstream::new(client.clone());
    match a.get(1).map(String::as_str) {
        Some("ingest") => {
            let n: u64 = a[2].parse()?;
            let size: usize = a[3].parse()?;
            let mode = a[4].as_str();
            let inflight: usize = a.get(5).map_or(Ok(5000), |s| s.parse())?;
            let _ = js.delete_stream(STREAM).await;
            let st = js
                .create_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec!["bench.>".into()],
                    storage: stream::StorageType::File,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("create stream: {e}"))?;
            let payload = Bytes::from(vec![b'x'; size]);
            let subjects: Vec<String> = (0..100).map(|i| format!("bench.k{i}")).collect();
            let t0 = Instant::now();
            match mode {
                "acked" => {
                    let mut pending = futures::stream::FuturesUnordered::new();
                    for i in 0..n {
                        let f = js
                            .publish(subjects[(i % 100) as usize].clone(), payload.clone())
                            .await
                            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                        pending.push(f.into_future());
                        while pending.len() >= inflight {
                            pending
                                .next()
                                .await
                                .unwrap()
                                .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                        }
                    }
                    while let Some(r) = pending.next().await {
                        r.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    }
                }
                "fire" => {
                    for i in 0..n {
                        client
                            .publish(subjects[(i % 100) as usize].clone(), payload.clone())
                            .await?;
                    }
                    client.flush().await?;
                    let mut st = st;
                    loop {
                        let info = st.info().await.map_err(|e| anyhow::anyhow!("info: {e}"))?;
                        if info.state.messages >= n {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                }
                m => anyhow::bail!("unknown mode {m}"),
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{{\"what\":\"ingest\",\"mode\":\"{mode}\",\"n\":{n},\"size\":{size},\"inflight\":{inflight},\"secs\":{secs:.3},\"per_s\":{:.0}}}",
                n as f64 / secs
            );
        }
        Some("replay") => {
            let n: u64 = a[2].parse()?;
            let st = js
                .get_stream(STREAM)
                .await
                .map_err(|e| anyhow::anyhow!("stream: {e}"))?;
            let c = st
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
            let t0 = Instant::now();
            let mut msgs = c
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("messages: {e}"))?;
            let mut got = 0u64;
            while got < n {
                match msgs.next().await {
                    Some(Ok(_)) => got += 1,
                    Some(Err(e)) => anyhow::bail!("replay: {e}"),
                    None => break,
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{{\"what\":\"replay\",\"n\":{got},\"secs\":{secs:.3},\"per_s\":{:.0}}}",
                got as f64 / secs
            );
        }
        _ => anyhow::bail!("usage: jsbench ingest N SIZE acked|fire [INFLIGHT] | jsbench replay N"),
    }
    Ok(())
}
