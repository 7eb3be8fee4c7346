//! Round-trip latency against `pong`: sends `--n` samples of `--size` bytes on `bench/ping`,
//! one at a time, and times each echo. Prints one JSON line:
//! `{"n":…,"size":…,"p50_us":…,"p99_us":…,"p999_us":…,"mean_us":…}`.
//!
//! `cargo run --release -p hypha-examples --example ping -- --connect tcp/127.0.0.1:7447 --n 10000 --size 64`

use clap::Parser;
use hypha::Priority;
use hypha_examples::{NetArgs, init_log, percentile};
use std::time::{Duration, Instant};

/// Round-trip latency against `pong`.
#[derive(Parser)]
struct Args {
    /// Round trips measured.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// While measuring, publish samples of this many bytes on `bench/bulk` (Background
    /// priority, blocking congestion control) as fast as the link takes them, on the same link
    /// as the pings (the pong subscribes to them): head-of-line blocking shows in p99.
    #[arg(long, default_value_t = 0)]
    bulk: usize,
    /// Publish the bulk from a second session (its own link to the pong) instead of the
    /// pings' link: what is left is the machine's CPU contention, not the link's queueing.
    #[arg(long)]
    bulk_separate: bool,
    /// Pace the bulk to this many MiB/s (0: as fast as the link takes it). A paced bulk leaves
    /// the CPU to the pings, so what is measured is the link's queueing, not a saturated
    /// machine.
    #[arg(long, default_value_t = 0.0)]
    bulk_rate: f64,
    /// Samples per round trip: send this many pings back to back, time until the last echo
    /// (puts closer together than 50 µs are batched by the link's writer).
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Write every measured round trip to this file, one line each: microseconds since the
    /// first measured ping was sent, the round trip, and the way there (from a `pong --stamp`,
    /// else NaN), in microseconds: when stalls happen and on which way, not only how long the
    /// tail is.
    #[arg(long)]
    rtts: Option<std::path::PathBuf>,
    /// A callback chain instead of the loop in `main`: each echo's callback (on the link's
    /// reader) times it and sends the next ping with `put(..).now()`, so no round trip
    /// crosses to `main`'s thread. Payloads carry a sequence number in their first 8 bytes.
    #[arg(long, conflicts_with_all = ["rtts", "burst"])]
    chain: bool,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args {
        n,
        size,
        warmup,
        bulk,
        bulk_separate,
        bulk_rate,
        burst,
        rtts: rtts_file,
        chain,
        net,
    } = Args::parse();
    let burst = burst.max(1);
    let session = hypha::open(net.config()?).await?;
    let sub = session
        .declare_subscriber("bench/pong")
        .capacity(1024)
        .stream()?;
    let publisher = std::sync::Arc::new(
        session
            .declare_publisher("bench/ping")?
            .priority(Priority::RealTime),
    );
    if !publisher.wait_matching(Duration::from_secs(30)).await {
        anyhow::bail!("no pong found within 30 s");
    }
    // The pong's own subscription to our replies may arrive a little after its subscriber
    // matched ours: retry the first round trip until an echo comes back.
    let payload = bytes::Bytes::from(vec![0xabu8; size.max(1)]);
    loop {
        publisher.put(payload.clone()).await?;
        if tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    let bulk_sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bulk_session = if bulk > 0 && bulk_separate {
        let mut cfg = net.config()?;
        cfg.listen.clear();
        Some(hypha::open(cfg).await?)
    } else {
        None
    };
    let bulk_task = if bulk > 0 {
        let p = bulk_session
            .as_ref()
            .unwrap_or(&session)
            .declare_publisher("bench/bulk")?
            .priority(Priority::Background)
            .congestion_control(hypha::CongestionControl::Block);
        if !p.wait_matching(Duration::from_secs(30)).await {
            anyhow::bail!("the pong does not subscribe to bench/bulk");
        }
        let blob = bytes::Bytes::from(vec![0x5au8; bulk]);
        let sent = bulk_sent.clone();
        // One sample every `bulk / rate` seconds; a late one does not make the next earlier.
        let every = (bulk_rate > 0.0)
            .then(|| Duration::from_secs_f64(bulk as f64 / (bulk_rate * (1u64 << 20) as f64)));
        Some(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            loop {
                if let Some(every) = every {
                    tokio::time::sleep_until(next).await;
                    next = (next + every).max(tokio::time::Instant::now());
                }
                if p.put(blob.clone()).await.is_err() {
                    break;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }))
    } else {
        None
    };
    let mut rtts = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut forward = Vec::with_capacity(n);
    let mut measured_from = (Instant::now(), 0);
    let sub = (!chain).then_some(sub);
    if chain {
        measured_from.1 = bulk_sent.load(std::sync::atomic::Ordering::Relaxed);
        // The warm-up round trips are in the chain too: the bulk rate counts from its start.
        rtts = callback_chain(&session, &publisher, size, warmup, n).await?;
    }
    for i in 0..warmup + n {
        let Some(sub) = sub.as_ref() else { break };
        if i == warmup {
            measured_from = (
                Instant::now(),
                bulk_sent.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        let t0 = Instant::now();
        // With `--rtts`, the payload carries the send time and a `pong --stamp` writes its
        // receive time after it (wall-clock microseconds, one machine): each way is seen.
        let sent_wall = hypha_examples::wall_micros();
        let payload = if rtts_file.is_some() && payload.len() >= 16 {
            let mut p = payload.to_vec();
            p[..8].copy_from_slice(&sent_wall.to_le_bytes());
            bytes::Bytes::from(p)
        } else {
            payload.clone()
        };
        for _ in 0..burst {
            publisher.put(payload.clone()).await?;
        }
        let mut echo = None;
        for _ in 0..burst {
            match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
                Ok(Some(s)) => echo = Some(s.payload),
                _ => anyhow::bail!("echo {i} lost"),
            }
        }
        if i >= warmup {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
            sent_at.push(t0.duration_since(measured_from.0).as_secs_f64() * 1e6);
            let there = echo
                .as_ref()
                .and_then(|e| e.get(8..16))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .filter(|&t| t >= sent_wall)
                .map(|t| (t - sent_wall) as f64);
            forward.push(there.unwrap_or(f64::NAN));
        }
    }
    let bulk_mib_s = (bulk_sent.load(std::sync::atomic::Ordering::Relaxed) - measured_from.1)
        as f64
        * bulk as f64
        / measured_from.0.elapsed().as_secs_f64()
        / (1u64 << 20) as f64;
    if let Some(t) = bulk_task {
        t.abort();
    }
    if let Some(path) = &rtts_file {
        let lines: String = sent_at
            .iter()
            .zip(&rtts)
            .zip(&forward)
            .map(|((t, r), f)| format!("{t:.1} {r:.1} {f:.1}\n"))
            .collect();
        std::fs::write(path, lines)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
    rtts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({
            "n": n, "size": size, "bulk": bulk, "bulk_separate": bulk_separate,
            "bulk_rate": bulk_rate,
            "burst": burst, "chain": chain,
            "bulk_mib_s": bulk_mib_s,
            "p50_us": percentile(&rtts, 50.0), "p99_us": percentile(&rtts, 99.0),
            "p999_us": percentile(&rtts, 99.9), "mean_us": mean,
        })
    );
    session.close().await;
    Ok(())
}

/// `--chain`: the echo's callback times the round trip and sends the next ping, from the
/// link's reader. Returns the measured round trips (µs), after `warmup` unmeasured ones.
async fn callback_chain(
    session: &hypha::Session,
    publisher: &std::sync::Arc<hypha::Publisher>,
    size: usize,
    warmup: usize,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let done: hypha_examples::chain::Done = Box::new(move |r| {
        let _ = done.send(r);
    });
    let state = std::sync::Arc::new(std::sync::Mutex::new(hypha_examples::chain::Chain::new(
        warmup, n, size, done,
    )));
    use hypha_examples::chain::lock;
    let st = state.clone();
    let p = publisher.clone();
    let _chain = session
        .declare_subscriber("bench/pong")
        .callback(move |s| {
            let now = Instant::now();
            let mut c = lock(&st);
            if let Some(next) = c.on_echo(&s.payload, now) {
                if let Err(e) = p.put(next).now() {
                    c.fail(e.to_string());
                }
            }
        })?;
    // The pong may learn of this subscriber a little after it is declared: resend the first
    // ping until the chain has started (its extra echoes are ignored).
    let mut finished = std::pin::pin!(finished);
    while !lock(&state).started() {
        let first = lock(&state).first();
        publisher.put(first).await?;
        let _ = tokio::time::timeout(Duration::from_millis(200), finished.as_mut()).await;
    }
    // A lost echo stops the chain: give up when it has not moved for 5 s.
    let mut last = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), finished.as_mut()).await {
            Ok(Ok(r)) => return r.map_err(anyhow::Error::msg),
            Ok(Err(_)) => anyhow::bail!("the chain ended without a result"),
            Err(_) => {
                let at = lock(&state).at();
                if at == last {
                    anyhow::bail!("echo {at} lost");
                }
                last = at;
            }
        }
    }
}
