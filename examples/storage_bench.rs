//! Storage figures: ingest (samples/s into the memory and sled backends, 64 B and 1 KiB
//! payloads) and replay (samples/s returned by a `_time` query over 1,000,000 stored samples,
//! through a second node on loopback TCP). Median of `--runs` (default 3).
//!
//! `cargo run --release -p hypha-examples --example storage_bench [-- --n 1000000 --runs 3]`

use clap::Parser;
use hypha::api::query::{Consolidation, QueryTarget};
use hypha::keyexpr::OwnedKeyExpr;
use hypha::storage::{
    self, Backend, BackendKind, MemoryBackend, SledBackend, StorageConfig, StoredSample,
};
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::id::NodeId;
use std::time::{Duration, Instant};

fn sample(i: u64, size: usize, t0: u64) -> StoredSample {
    StoredSample {
        key: format!("bench/k{}", i % 100),
        kind: hypha::SampleKind::Put,
        payload: vec![(i % 251) as u8; size],
        timestamp: Timestamp {
            time: Ntp64::from_unix_micros(t0 + i),
            id: NodeId::from_u128(7),
        },
        encoding: None,
    }
}

fn ingest(b: &mut dyn Backend, n: u64, size: usize) -> anyhow::Result<f64> {
    let t0 = hypha::storage::timeexpr::now_us() as u64 - n;
    let samples: Vec<StoredSample> = (0..n).map(|i| sample(i, size, t0)).collect();
    let start = Instant::now();
    for s in &samples {
        b.store(s)?;
    }
    b.flush()?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn replay(dir: &std::path::Path, n: u64) -> anyhow::Result<f64> {
    // Fill a sled store, then serve it from a storage node and query it from another node.
    {
        let mut b = SledBackend::open(dir, 100)?;
        if b.history_len() < n as usize {
            ingest(&mut b, n, 64)?;
        }
    }
    let mut c = hypha::Config::default();
    c.mdns = false;
    c.listen = vec!["tcp/127.0.0.1:0".parse()?];
    let server = hypha::open(c.clone()).await?;
    let mut sc = StorageConfig::new(OwnedKeyExpr::new("bench/**".to_string())?);
    sc.backend = BackendKind::Sled(dir.to_path_buf());
    sc.retain_age = None;
    let st = storage::start(&server, sc).await?;
    c.connect = vec![server.info().listening[0].clone()];
    let client = hypha::open(c).await?;
    let key = OwnedKeyExpr::new("bench/**".to_string())?;
    anyhow::ensure!(
        client.wait_queryable(&key, Duration::from_secs(10)).await,
        "no storage"
    );
    let start = Instant::now();
    let mut replies = client
        .get("bench/**?_time=[..]")
        .target(QueryTarget::All)
        .consolidation(Consolidation::None)
        .timeout(Duration::from_secs(600))
        .send()
        .await?;
    let mut got = 0u64;
    while let Some(r) = replies.recv().await {
        if r.result.is_ok() {
            got += 1;
        }
    }
    let rate = got as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(got == n, "replayed {got} of {n}");
    st.close().await;
    client.close().await;
    server.close().await;
    Ok(rate)
}

/// Storage ingest and replay figures.
#[derive(Parser)]
struct Args {
    /// Samples stored, then replayed.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Runs per figure (the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Samples written per ingest run.
    #[arg(long, default_value_t = 200_000)]
    ingest_n: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { n, runs, ingest_n } = Args::parse();
    println!("| measurement | samples/s (median of {runs}) |");
    println!("| --- | ---: |");
    for size in [64usize, 1024] {
        let m = median(
            (0..runs)
                .map(|_| ingest(&mut MemoryBackend::new(), ingest_n, size))
                .collect::<Result<_, _>>()?,
        );
        println!("| ingest, memory, {size} B | {m:.0} |");
        let mut v = Vec::new();
        for _ in 0..runs {
            let dir = tempfile_dir()?;
            v.push(ingest(
                &mut SledBackend::open(dir.path(), 100)?,
                ingest_n,
                size,
            )?);
        }
        println!("| ingest, sled, {size} B | {:.0} |", median(v));
    }
    let dir = tempfile_dir()?;
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(replay(dir.path(), n).await?);
    }
    println!(
        "| replay of {n} samples (sled, `_time` query over TCP) | {:.0} |",
        median(v)
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::tempdir()?)
}
