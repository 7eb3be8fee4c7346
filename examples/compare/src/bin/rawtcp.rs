//! The physical floor: raw TCP ping-pong (`rawtcp ping --n N --size S`) and raw TCP streaming
//! (`rawtcp stream --size S --secs T`), both over loopback, blocking sockets, TCP_NODELAY.
//! `rawtcp blast --size S --rate MIB_S --secs T` sends S-byte messages at MIB_S MiB/s (0: as
//! fast as it goes) from one thread to another of this process over loopback: bulk load with no
//! library in it, beside which another program's round trips show the machine's own contention.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: usize = arg(&args, "--size", 64);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    match args.first().map(String::as_str) {
        Some("ping") => {
            let n: usize = arg(&args, "--n", 10_000);
            let echo = std::thread::spawn(move || -> anyhow::Result<()> {
                let (mut s, _) = l.accept()?;
                s.set_nodelay(true)?;
                let mut buf = vec![0u8; size];
                while s.read_exact(&mut buf).is_ok() {
                    s.write_all(&buf)?;
                }
                Ok(())
            });
            let mut s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            let mut buf = vec![1u8; size];
            let mut rtts = Vec::with_capacity(n);
            for i in 0..n + 1000 {
                let t0 = Instant::now();
                s.write_all(&buf)?;
                s.read_exact(&mut buf)?;
                if i >= 1000 {
                    rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                }
            }
            drop(s);
            let _ = echo.join();
            rtts.sort_by(|a, b| a.total_cmp(b));
            let p = |q: f64| rtts[((q / 100.0) * (rtts.len() - 1) as f64).round() as usize];
            println!(
                "{}",
                serde_json::json!({"n": n, "size": size, "p50_us": p(50.0), "p99_us": p(99.0), "p999_us": p(99.9)})
            );
        }
        Some("tokio_ping") => {
            // The async floor: the same ping-pong with tokio (multi-thread runtime, the ping loop
            // in `block_on` like an application's `main`, the echo a task on the workers).
            drop(l);
            let n: usize = arg(&args, "--n", 10_000);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let rtts = rt.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = l.local_addr()?;
                tokio::spawn(async move {
                    if let Ok((mut s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        let mut buf = vec![0u8; size];
                        while s.read_exact(&mut buf).await.is_ok() {
                            if s.write_all(&buf).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let mut buf = vec![1u8; size];
                let mut rtts = Vec::with_capacity(n);
                for i in 0..n + 1000 {
                    let t0 = Instant::now();
                    s.write_all(&buf).await?;
                    s.read_exact(&mut buf).await?;
                    if i >= 1000 {
                        rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                }
                anyhow::Ok(rtts)
            })?;
            let mut rtts = rtts;
            rtts.sort_by(|a, b| a.total_cmp(b));
            let p = |q: f64| rtts[((q / 100.0) * (rtts.len() - 1) as f64).round() as usize];
            println!(
                "{}",
                serde_json::json!({"n": n, "size": size, "p50_us": p(50.0), "p99_us": p(99.0), "p999_us": p(99.9)})
            );
        }
        Some("stream") => {
            let secs: f64 = arg(&args, "--secs", 5.0);
            let writer = std::thread::spawn(move || -> anyhow::Result<()> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let mut buf = vec![0u8; size + 4];
                buf[..4].copy_from_slice(&(size as u32).to_le_bytes());
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs_f64(secs) {
                    for _ in 0..64 {
                        s.write_all(&buf)?;
                    }
                }
                Ok(())
            });
            let (s, _) = l.accept()?;
            let mut r = std::io::BufReader::with_capacity(1 << 20, s);
            let mut buf = vec![0u8; size];
            let mut n = 0u64;
            let t0 = Instant::now();
            loop {
                let mut len = [0u8; 4];
                if r.read_exact(&mut len).is_err() || r.read_exact(&mut buf).is_err() {
                    break;
                }
                n += 1;
            }
            let el = t0.elapsed().as_secs_f64();
            let _ = writer.join();
            println!(
                "{}",
                serde_json::json!({"msgs_per_s": n as f64 / el, "mb_per_s": (n as f64 * size as f64) / el / 1e6})
            );
        }
        Some("blast") => {
            let secs: f64 = arg(&args, "--secs", 10.0);
            let rate: f64 = arg(&args, "--rate", 0.0);
            let every = (rate > 0.0)
                .then(|| Duration::from_secs_f64(size as f64 / (rate * (1u64 << 20) as f64)));
            let reader = std::thread::spawn(move || -> anyhow::Result<u64> {
                let (mut s, _) = l.accept()?;
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf)? {
                        0 => return Ok(total),
                        n => total += n as u64,
                    }
                }
            });
            let mut s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            let buf = vec![0x5au8; size];
            let t0 = Instant::now();
            let mut next = t0;
            while t0.elapsed() < Duration::from_secs_f64(secs) {
                s.write_all(&buf)?;
                if let Some(every) = every {
                    // A late message does not make the next one earlier.
                    next = (next + every).max(Instant::now());
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            drop(s);
            let total = reader
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))??;
            let el = t0.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"size": size, "rate": rate, "mib_per_s": total as f64 / el / (1u64 << 20) as f64})
            );
        }
        _ => anyhow::bail!(
            "usage: rawtcp ping|tokio_ping|stream|blast [--size N] [--n N] [--secs S] [--rate MIB_S]"
        ),
    }
    Ok(())
}
