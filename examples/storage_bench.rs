//! Storage figures: ingest (samples/s into the memory and sled backends, 64 B and 1 KiB
//! payloads) and replay (samples/s returned by a `_time` query over 1,000,000 stored samples,
//! through a second node on loopback TCP). Median of `--runs` (default 3).
//!
//! `cargo run --release -p hypha-examples --example storage_bench [-- --n 1000000 --runs 3]`

use clap::Parser;
use hypha::api::query::{Consolidation, QueryTarget};
use hypha::keyexpr::OwnedKeyExpr;
use hypha::storage::{
    self, Backend, BackendKind, LogBackend, MemoryBackend, RedbBackend, SledBackend, StorageConfig,
    StoredSample,
};
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::id::NodeId;
use std::time::{Duration, Instant};

fn sample(i: u64, size: usize, t0: u64) -> StoredSample {
    StoredSample {
        key: format!("bench/k{}", i % 100).into(),
        kind: hypha::SampleKind::Put,
        payload: vec![(i % 251) as u8; size].into(),
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
    // In batches, as the storage's writer thread stores them (up to 512 per batch).
    for chunk in samples.chunks(512) {
        b.store_batch(chunk)?;
        if b.flush_due() {
            b.flush()?;
        }
    }
    b.flush()?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Every sample, page by page, in process (what a storage's replay reads from its engine).
fn scan(b: &dyn Backend, n: u64) -> anyhow::Result<f64> {
    let all = hypha::keyexpr::KeyExpr::new("bench/**")?;
    let start = Instant::now();
    let (mut got, mut after) = (0u64, None::<Vec<u8>>);
    loop {
        let p = b.history_page(
            &all,
            after.as_deref(),
            Ntp64(0),
            Ntp64(u64::MAX),
            4096,
            4096,
        )?;
        got += p.samples.len() as u64;
        match p.next {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    anyhow::ensure!(got == n, "scanned {got} of {n}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            disk_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
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
    }
    println!();
    println!(
        "Engines on disk, in process ({ingest_n} samples per run, batches of 512, flush every 100 ms; median of {runs}):"
    );
    println!();
    println!("| engine | payload | ingest/s | scan/s | disk B/sample | reopen ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    type Open = fn(&std::path::Path) -> anyhow::Result<Box<dyn Backend>>;
    #[allow(unused_mut)] // more with the fjall feature
    let mut engines: Vec<(&str, Open)> = vec![
        ("log", |d| Ok(Box::new(LogBackend::open(d, 100)?))),
        ("sled", |d| Ok(Box::new(SledBackend::open(d, 100)?))),
        ("redb", |d| Ok(Box::new(RedbBackend::open(d, 100)?))),
    ];
    #[cfg(feature = "fjall")]
    engines.push(("fjall", |d| {
        Ok(Box::new(hypha::storage::FjallBackend::open(d, 100)?))
    }));
    for (name, open) in engines {
        for size in [64usize, 1024] {
            let (mut ing, mut sc, mut disk, mut re) = (vec![], vec![], vec![], vec![]);
            for _ in 0..runs {
                let dir = tempfile_dir()?;
                {
                    let mut b = open(dir.path())?;
                    ing.push(ingest(b.as_mut(), ingest_n, size)?);
                }
                disk.push(disk_bytes(dir.path()) as f64 / ingest_n as f64);
                let t = Instant::now();
                let b = open(dir.path())?;
                re.push(t.elapsed().as_secs_f64() * 1e3);
                sc.push(scan(b.as_ref(), ingest_n)?);
            }
            println!(
                "| {name} | {size} B | {:.0} | {:.0} | {:.0} | {:.0} |",
                median(ing),
                median(sc),
                median(disk),
                median(re)
            );
        }
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
