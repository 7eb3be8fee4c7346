//! Link throughput over loopback: batches/s and MB/s per transport for 64 B and 64 KiB batches,
//! next to a raw blocking-TCP baseline measured in the same run. Each figure is the median of
//! several runs.
//!
//! Run: `cargo run --release -p hypha-transports --example link_bench [-- --secs 2 --runs 3]`

use hypha_transports::{Endpoint, LinkRecv, LinkSend, TlsConfig, connect, listen};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn frame(size: usize, header: u8) -> Vec<u8> {
    let mut b = vec![0u8; size];
    b[0] = header;
    b
}

/// Sends batches for `secs` seconds on one link; returns batches/s measured at the receiver.
async fn run_link(text: &str, size: usize, secs: f64) -> anyhow::Result<f64> {
    let tls = TlsConfig::default();
    let mut l = listen(&text.parse::<Endpoint>()?, &tls).await?;
    let ep = l.local_endpoint().clone();
    let udp = text.starts_with("udp");
    let mut a = connect(&ep, &tls).await?;
    // Reliable Data lane; UDP is best effort by nature.
    let data = frame(size, if udp { 0x2d } else { 0x6d });
    if udp {
        a.tx.send(&data).await?;
    }
    let mut b = l.accept().await.ok_or_else(|| anyhow::anyhow!("no link"))?;
    let stop = Duration::from_secs_f64(secs);
    let sender = tokio::spawn(async move {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < stop {
            for _ in 0..64 {
                if a.tx.send(&data).await.is_err() {
                    return n;
                }
                n += 1;
            }
            if udp {
                // Do not overrun the receiver's socket buffer too badly.
                tokio::task::yield_now().await;
            }
        }
        a.tx.close().await;
        // Keep the link open until the receiver is done.
        tokio::time::sleep(Duration::from_millis(300)).await;
        n
    });
    let t0 = Instant::now();
    let mut got = 0u64;
    let mut last = t0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), b.rx.recv()).await {
        got += 1;
        last = Instant::now();
    }
    let sent = sender.await?;
    let el = last.duration_since(t0).as_secs_f64().max(1e-6);
    if udp && sent > 0 {
        eprintln!("  udp {size} B: received {got} of {sent} sent");
    }
    Ok(got as f64 / el)
}

/// Raw blocking TCP: length-prefixed writes of `size` bytes, read back by another thread.
fn run_raw_tcp(size: usize, secs: f64) -> anyhow::Result<f64> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let stop = Duration::from_secs_f64(secs);
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size + 2];
        buf[..2].copy_from_slice(&(size as u16).to_le_bytes());
        let t0 = Instant::now();
        while t0.elapsed() < stop {
            for _ in 0..64 {
                s.write_all(&buf)?;
            }
        }
        Ok(())
    });
    let (mut s, _) = l.accept()?;
    let mut r = std::io::BufReader::with_capacity(256 * 1024, &mut s);
    let mut buf = vec![0u8; 65_536];
    let mut got = 0u64;
    let t0 = Instant::now();
    loop {
        let mut len = [0u8; 2];
        if r.read_exact(&mut len).is_err() {
            break;
        }
        let n = u16::from_le_bytes(len) as usize;
        if r.read_exact(&mut buf[..n]).is_err() {
            break;
        }
        got += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(got as f64 / el)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let secs = arg("--secs", 2) as f64;
    let runs = arg("--runs", 3) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let unix = format!("unix/{}", dir.path().join("bench.sock").display());
    println!("| transport | batch | batches/s | MB/s | vs raw TCP |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for size in [64usize, 65_535] {
        let raw = median(
            (0..runs)
                .map(|_| run_raw_tcp(size, secs))
                .collect::<Result<_, _>>()?,
        );
        let label = if size == 64 { "64 B" } else { "64 KiB" };
        let row = |name: &str, rate: f64| {
            println!(
                "| {name} | {label} | {:.0} | {:.1} | {:.2}x |",
                rate,
                rate * size as f64 / 1e6,
                rate / raw
            )
        };
        row("raw blocking TCP", raw);
        for text in [
            "tcp/127.0.0.1:0",
            unix.as_str(),
            "quic/127.0.0.1:0",
            "udp/127.0.0.1:0",
            "mem/bench",
        ] {
            if text.starts_with("udp") && size > 1452 {
                continue; // one batch per datagram: UDP links carry at most 1,452 bytes
            }
            let mut v = Vec::new();
            for _ in 0..runs {
                v.push(rt.block_on(run_link(text, size, secs))?);
            }
            row(text.split('/').next().unwrap_or(text), median(v));
        }
    }
    Ok(())
}
