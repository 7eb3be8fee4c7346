//! `hypha-udp`: UDP echo and ping for tests across network namespaces (round trips, loss).
//!
//! ```text
//! hypha-udp echo --bind 10.77.0.2:0
//!   {"event":"ready","addr":"10.77.0.2:40527"}          then echoes every datagram to its sender
//! hypha-udp ping --to 10.77.0.2:40527 --count 1000 --interval-us 500 [--size 64] [--linger-ms 2000]
//!   {"event":"ready","addr":"10.77.0.1:51234"}
//!   {"event":"reply","seq":0,"rtt_us":100512}           one line per echo received
//!   {"event":"sent","count":1000}                       once every datagram has been sent
//!   {"event":"done","sent":1000,"received":702,…}       only with --linger-ms: after that long
//!                                                       without a reply, then it exits
//! ```
//!
//! A ping datagram holds a magic, its sequence number and its send time (this process's monotonic
//! clock), padded to `--size`; anything else received is counted as `foreign` and ignored.
//! Without `--linger-ms` ping runs until it is killed. Stdout carries only JSON lines. It never
//! panics on what it receives.

use clap::{Parser, Subcommand};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"HYPN";
const HEADER: usize = 4 + 8 + 8;

#[derive(Parser, Debug)]
#[command(name = "hypha-udp")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Echo every datagram back to its sender.
    Echo {
        /// Address to bind (port 0: any; the ready line tells).
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
    },
    /// Send numbered datagrams and print each echo with its round-trip time.
    Ping {
        /// The echo's address.
        #[arg(long)]
        to: SocketAddr,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Datagrams to send.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Pause between two sends, in microseconds.
        #[arg(long, default_value_t = 10_000)]
        interval_us: u64,
        /// Datagram size in bytes (at least 20).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Exit after this long without a reply once all are sent, with a summary.
        #[arg(long)]
        linger_ms: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    let r = match Args::parse().mode {
        Mode::Echo { bind } => echo(bind),
        Mode::Ping {
            to,
            bind,
            count,
            interval_us,
            size,
            linger_ms,
        } => ping(to, bind, count, interval_us, size, linger_ms),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hypha-udp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn echo(bind: SocketAddr) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(bind)?;
    println!(
        "{}",
        serde_json::json!({"event": "ready", "addr": sock.local_addr()?.to_string()})
    );
    let mut buf = vec![0u8; 65_536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Err(e) = sock.send_to(&buf[..n], from) {
                    eprintln!("hypha-udp echo: send to {from}: {e}");
                }
            }
            Err(e) => {
                eprintln!("hypha-udp echo: recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn ping(
    to: SocketAddr,
    bind: SocketAddr,
    count: u64,
    interval_us: u64,
    size: usize,
    linger_ms: Option<u64>,
) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    println!(
        "{}",
        serde_json::json!({"event": "ready", "addr": sock.local_addr()?.to_string()})
    );
    let t0 = Instant::now();
    let sender = sock.try_clone()?;
    let size = size.max(HEADER);
    let sending = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = vec![0u8; size];
        buf[..4].copy_from_slice(MAGIC);
        for seq in 0..count {
            // Paced from the start, so that a slow send does not stretch the whole run.
            let due = Duration::from_micros(interval_us.saturating_mul(seq));
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            buf[4..12].copy_from_slice(&seq.to_be_bytes());
            let now = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            buf[12..20].copy_from_slice(&now.to_be_bytes());
            if let Err(e) = sender.send_to(&buf, to) {
                eprintln!("hypha-udp ping: send {seq}: {e}");
            }
        }
        println!("{}", serde_json::json!({"event": "sent", "count": count}));
        Ok(())
    });
    let mut buf = vec![0u8; 65_536];
    let (mut received, mut foreign, mut dups) = (0u64, 0u64, 0u64);
    let mut seen = vec![false; usize::try_from(count).unwrap_or(0)];
    let (mut min, mut max, mut sum) = (u64::MAX, 0u64, 0u64);
    let mut last = Instant::now();
    let mut all_sent = false;
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let p = &buf[..n];
                let parsed = (n >= HEADER && &p[..4] == MAGIC).then(|| {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&p[4..12]);
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&p[12..20]);
                    (u64::from_be_bytes(s), u64::from_be_bytes(t))
                });
                let Some((seq, sent_us)) = parsed.filter(|(s, _)| *s < count) else {
                    foreign += 1;
                    continue;
                };
                last = Instant::now();
                let now = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                let rtt = now.saturating_sub(sent_us);
                let slot = usize::try_from(seq).ok().and_then(|i| seen.get_mut(i));
                let dup = match slot {
                    Some(s) if *s => true,
                    Some(s) => {
                        *s = true;
                        false
                    }
                    None => false,
                };
                if dup {
                    dups += 1;
                } else {
                    received += 1;
                    min = min.min(rtt);
                    max = max.max(rtt);
                    sum += rtt;
                }
                println!(
                    "{}",
                    serde_json::json!({"event": "reply", "seq": seq, "rtt_us": rtt, "dup": dup})
                );
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                // ICMP errors (port unreachable) surface here: note them and go on.
                eprintln!("hypha-udp ping: recv: {e}");
            }
        }
        if !all_sent && sending.is_finished() {
            all_sent = true;
            last = last.max(Instant::now());
        }
        if let Some(l) = linger_ms {
            if all_sent && last.elapsed() >= Duration::from_millis(l) {
                break;
            }
        }
    }
    let avg = sum.checked_div(received).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "event": "done", "sent": count, "received": received, "duplicates": dups,
            "foreign": foreign,
            "rtt_us": {"min": if received > 0 { min } else { 0 }, "avg": avg, "max": max},
        })
    );
    Ok(())
}
