//! The Zenoh side of the comparison: the same workloads and the same JSON lines as Hypha's
//! `ping`, `pong`, `thr_pub`, `thr_sub` and `idle` examples. Peer mode, multicast scouting off,
//! explicit endpoints. `zbench MODE [--listen EP]... [--connect EP]... [--size N] [--n N] [--secs S]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zenoh::qos::{CongestionControl, Priority};

fn arg_all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg_all(args, name)
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn config(args: &[String]) -> anyhow::Result<zenoh::Config> {
    let mut c = zenoh::Config::default();
    let e = |e: Box<dyn std::error::Error + Send + Sync>| anyhow::anyhow!("{e}");
    let mode = arg(args, "--zmode", "peer".to_string());
    c.insert_json5("mode", &format!("{mode:?}")).map_err(e)?;
    c.insert_json5("scouting/multicast/enabled", "false")
        .map_err(e)?;
    let listen = arg_all(args, "--listen");
    let connect = arg_all(args, "--connect");
    c.insert_json5("listen/endpoints", &serde_json::to_string(&listen)?)
        .map_err(e)?;
    c.insert_json5("connect/endpoints", &serde_json::to_string(&connect)?)
        .map_err(e)?;
    if let Some(dir) = std::env::var_os("ZBENCH_TLS_DIR") {
        let dir = std::path::PathBuf::from(dir);
        let p = |f: &str| serde_json::to_string(&dir.join(f).to_string_lossy()).unwrap_or_default();
        c.insert_json5("transport/link/tls/root_ca_certificate", &p("ca.pem"))
            .map_err(e)?;
        c.insert_json5("transport/link/tls/listen_private_key", &p("node.key"))
            .map_err(e)?;
        c.insert_json5("transport/link/tls/listen_certificate", &p("node.pem"))
            .map_err(e)?;
        c.insert_json5("transport/link/tls/verify_name_on_connect", "false")
            .map_err(e)?;
    }
    Ok(c)
}

async fn open(args: &[String]) -> anyhow::Result<zenoh::Session> {
    zenoh::open(config(args)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Ping and pong in Zenoh's own best style (its `z_ping` / `z_pong` examples): no runtime of
/// ours, a blocking `recv()` on the subscriber's FIFO, `wait()` on every call, and the pong
/// answering from the subscriber callback.
fn sync_ping_pong(mode: &str, args: &[String]) -> anyhow::Result<()> {
    use zenoh::Wait;
    let z = |e: Box<dyn std::error::Error + Send + Sync>| anyhow::anyhow!("{e}");
    let s = zenoh::open(config(args)?).wait().map_err(z)?;
    if mode == "pong" {
        let p = s
            .declare_publisher("bench/pong")
            .congestion_control(CongestionControl::Block)
            .priority(Priority::RealTime)
            .express(true)
            .wait()
            .map_err(z)?;
        let _sub = s
            .declare_subscriber("bench/ping")
            .callback(move |sample| {
                let _ = p.put(sample.payload().clone()).wait();
            })
            .wait()
            .map_err(z)?;
        // `ping --bulk`'s background load: taken and dropped (as Hypha's pong does).
        let _bulk = s
            .declare_subscriber("bench/bulk")
            .callback(|_| {})
            .wait()
            .map_err(z)?;
        let secs: u64 = arg(args, "--secs", 0);
        if secs == 0 {
            loop {
                std::thread::park();
            }
        }
        std::thread::sleep(Duration::from_secs(secs));
        return Ok(());
    }
    let n: usize = arg(args, "--n", 10_000);
    let size: usize = arg(args, "--size", 64);
    let warmup: usize = arg(args, "--warmup", 1_000);
    let sub = s.declare_subscriber("bench/pong").wait().map_err(z)?;
    let p = Arc::new(
        s.declare_publisher("bench/ping")
            .congestion_control(CongestionControl::Block)
            .priority(Priority::RealTime)
            .express(true)
            .wait()
            .map_err(z)?,
    );
    let t0 = Instant::now();
    while !p.matching_status().wait().map_err(z)?.matching() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no subscriber within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let payload = vec![0xabu8; size.max(1)];
    loop {
        p.put(payload.clone()).wait().map_err(z)?;
        if sub
            .recv_timeout(Duration::from_millis(200))
            .map_err(z)?
            .is_some()
        {
            break;
        }
    }
    // As Hypha's `ping --bulk B [--bulk-rate MIB_S] [--bulk-separate]`: B-byte samples on
    // bench/bulk at Background priority (Block), paced or as fast as the link takes them,
    // from this session (the same link) or a second one (its own link).
    let bulk: usize = arg(args, "--bulk", 0);
    let bulk_rate: f64 = arg(args, "--bulk-rate", 0.0);
    let bulk_separate = args.iter().any(|a| a == "--bulk-separate");
    let bulk_sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bulk_thread = if bulk > 0 {
        let bs = if bulk_separate {
            // Its own link: the same endpoints to connect to, nothing to listen on.
            let connect: Vec<String> = arg_all(args, "--connect")
                .into_iter()
                .flat_map(|c| ["--connect".to_string(), c])
                .collect();
            zenoh::open(config(&connect)?).wait().map_err(z)?
        } else {
            s.clone()
        };
        let bp = bs
            .declare_publisher("bench/bulk")
            .congestion_control(CongestionControl::Block)
            .priority(Priority::Background)
            .wait()
            .map_err(z)?;
        let t0 = Instant::now();
        while !bp.matching_status().wait().map_err(z)?.matching() {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "the pong does not subscribe to bench/bulk"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (sent, stop) = (bulk_sent.clone(), stop.clone());
        let every = (bulk_rate > 0.0)
            .then(|| Duration::from_secs_f64(bulk as f64 / (bulk_rate * (1u64 << 20) as f64)));
        Some(std::thread::spawn(move || {
            let _keep = bs;
            let blob = zenoh::bytes::ZBytes::from(vec![0x5au8; bulk]);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(every) = every {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    next = (next + every).max(Instant::now());
                }
                if bp.put(blob.clone()).wait().is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }))
    } else {
        None
    };
    let mut rtts = Vec::with_capacity(n);
    let mut measured_from = (Instant::now(), 0);
    let chain = args.iter().any(|a| a == "--chain");
    let sub = if chain {
        drop(sub);
        measured_from.1 = bulk_sent.load(Ordering::Relaxed);
        rtts = callback_chain(&s, p.clone(), size, warmup, n)?;
        None
    } else {
        Some(sub)
    };
    for i in 0..warmup + n {
        let Some(sub) = sub.as_ref() else { break };
        if i == warmup {
            measured_from = (Instant::now(), bulk_sent.load(Ordering::Relaxed));
        }
        let t0 = Instant::now();
        p.put(payload.clone()).wait().map_err(z)?;
        if sub.recv().is_err() {
            anyhow::bail!("echo {i} lost");
        }
        if i >= warmup {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let bulk_mib_s = (bulk_sent.load(Ordering::Relaxed) - measured_from.1) as f64 * bulk as f64
        / measured_from.0.elapsed().as_secs_f64()
        / (1u64 << 20) as f64;
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = bulk_thread {
        let _ = t.join();
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
    rtts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({"n": n, "size": size, "chain": chain, "bulk": bulk, "bulk_separate": bulk_separate,
            "bulk_rate": bulk_rate, "bulk_mib_s": bulk_mib_s, "p50_us": percentile(&rtts, 50.0),
            "p99_us": percentile(&rtts, 99.0), "p999_us": percentile(&rtts, 99.9), "mean_us": mean})
    );
    Ok(())
}

#[path = "../../../chain.rs"]
mod chain;

/// `ping --chain`, as Hypha's (the same `chain.rs`): the echo's callback (on Zenoh's receive
/// task) times the round trip and sends the next ping with `put(..).wait()`.
fn callback_chain(
    s: &zenoh::Session,
    p: Arc<zenoh::pubsub::Publisher<'static>>,
    size: usize,
    warmup: usize,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    use zenoh::Wait;
    let z = |e: Box<dyn std::error::Error + Send + Sync>| anyhow::anyhow!("{e}");
    let (done, finished) = std::sync::mpsc::channel();
    let done: chain::Done = Box::new(move |r| {
        let _ = done.send(r);
    });
    let state = Arc::new(std::sync::Mutex::new(chain::Chain::new(
        warmup, n, size, done,
    )));
    use chain::lock;
    let (st, cp) = (state.clone(), p.clone());
    let _chain = s
        .declare_subscriber("bench/pong")
        .callback(move |sample| {
            let now = Instant::now();
            let bytes = sample.payload().to_bytes();
            let mut c = lock(&st);
            if let Some(next) = c.on_echo(&bytes, now) {
                if let Err(e) = cp.put(next).wait() {
                    c.fail(e.to_string());
                }
            }
        })
        .wait()
        .map_err(z)?;
    while !lock(&state).started() {
        let first = lock(&state).first();
        p.put(first).wait().map_err(z)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut last = 0;
    loop {
        match finished.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => return r.map_err(anyhow::Error::msg),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the chain ended without a result")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let at = lock(&state).at();
                anyhow::ensure!(at != last, "echo {at} lost");
                last = at;
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((p / 100.0) * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

async fn wait_matching(p: &zenoh::pubsub::Publisher<'_>) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let m = p
            .matching_status()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if m.matching() {
            return Ok(());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no subscriber within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    if mode == "ping" || mode == "pong" {
        return sync_ping_pong(&mode, &args);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async_main(args))
}

async fn async_main(args: Vec<String>) -> anyhow::Result<()> {
    let mode = args.first().cloned().unwrap_or_default();
    let z = |e: Box<dyn std::error::Error + Send + Sync>| anyhow::anyhow!("{e}");
    match mode.as_str() {
        "thr_pub" => {
            let size: usize = arg(&args, "--size", 8);
            let secs: u64 = arg(&args, "--secs", 0);
            let s = open(&args).await?;
            let p = s
                .declare_publisher("bench/thr")
                .congestion_control(CongestionControl::Block)
                .await
                .map_err(z)?;
            wait_matching(&p).await?;
            let payload = zenoh::bytes::ZBytes::from(vec![7u8; size.max(1)]);
            let t0 = Instant::now();
            while secs == 0 || t0.elapsed() < Duration::from_secs(secs) {
                for _ in 0..256 {
                    p.put(payload.clone()).await.map_err(z)?;
                }
            }
        }
        "thr_sub" => {
            let secs: u64 = arg(&args, "--secs", 5);
            let s = open(&args).await?;
            let count = Arc::new(AtomicU64::new(0));
            let bytes = Arc::new(AtomicU64::new(0));
            let (c, b) = (count.clone(), bytes.clone());
            let _sub = s
                .declare_subscriber("bench/thr")
                .callback(move |sample| {
                    c.fetch_add(1, Ordering::Relaxed);
                    b.fetch_add(sample.payload().len() as u64, Ordering::Relaxed);
                })
                .await
                .map_err(z)?;
            println!("{}", serde_json::json!({"event": "ready"}));
            while count.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (n0, b0, t0) = (
                count.load(Ordering::Relaxed),
                bytes.load(Ordering::Relaxed),
                Instant::now(),
            );
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let el = t0.elapsed().as_secs_f64();
            let n = count.load(Ordering::Relaxed) - n0;
            let b = bytes.load(Ordering::Relaxed) - b0;
            println!(
                "{}",
                serde_json::json!({"msgs_per_s": n as f64 / el, "mb_per_s": b as f64 / el / 1e6,
                    "samples": n, "secs": el, "rss_kb": rss_kb()})
            );
        }
        // The declaration-economy scenario (issue 10, T4): a router, or a client declaring
        // --subs subscriptions fleet/v<i>/cmd plus optionally a publisher (--pub KEY) and a
        // subscriber (--sub KEY); it prints ready and stays for --secs.
        "router" | "decl" => {
            let s = open(&args).await?;
            let n: usize = arg(&args, "--subs", 0);
            let mut subs = Vec::new();
            for i in 0..n {
                subs.push(
                    s.declare_subscriber(format!("fleet/v{i}/cmd"))
                        .callback(|_| {})
                        .await
                        .map_err(z)?,
                );
            }
            let p = match arg_all(&args, "--pub").first() {
                Some(k) => Some(s.declare_publisher(k.clone()).await.map_err(z)?),
                None => None,
            };
            if let Some(k) = arg_all(&args, "--sub").first() {
                subs.push(
                    s.declare_subscriber(k.clone())
                        .callback(|_| {})
                        .await
                        .map_err(z)?,
                );
            }
            println!(
                "{}",
                serde_json::json!({"event": "ready", "subs": subs.len()})
            );
            tokio::time::sleep(Duration::from_secs(arg(&args, "--secs", 10))).await;
            drop(p);
            drop(subs);
        }
        "idle" => {
            let s = open(&args).await?;
            tokio::time::sleep(Duration::from_secs(arg(&args, "--secs", 2))).await;
            println!("{}", serde_json::json!({"rss_kb": rss_kb()}));
            drop(s);
        }
        _ => anyhow::bail!(
            "usage: zbench ping|pong|thr_pub|thr_sub|idle [--listen EP] [--connect EP] ..."
        ),
    }
    Ok(())
}
