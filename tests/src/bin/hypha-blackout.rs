//! `hypha-blackout`: what a blackout costs and where each loss is counted (issue 16; a bench
//! program, not a test: BENCHMARKS.md). Two network namespaces joined by the impairment bridge
//! (`hypha-impair`); `hypha peer` listens in B with a subscriber beside it (`hypha-probe sub`, a
//! client of that peer on B's own address, so the cut never touches it), `hypha pub` (a client)
//! in A publishes numbered samples to the peer at a fixed pace; after a steady start the bridge
//! cuts the link silently (every packet dropped, no reset) for `--secs`, then restores it. Per
//! round one JSON line: samples published, received, lost; what the publisher's `warning: N of
//! M publications lost` line counted (congestion drops, queued on a link that closed, written
//! to a link that closed before the peer acknowledged it, made while nobody was reachable), what
//! it did not (`uncounted`; negative when it counted samples as unconfirmed that had arrived
//! with their acknowledgement lost in the cut); what the subscriber counted as gaps in the
//! publisher's sequence numbers; the publisher's exit code; and how long after the uncut
//! samples arrived again. Needs root (namespaces, TUN).
//!
//! ```text
//! hypha-blackout --hypha target/release/hypha-test-cli --impair target/release/hypha-impair \
//!   --probe target/release/hypha-probe --proto tcp --secs 10 --rounds 3
//! ```

use anyhow::{Context, Result};
use clap::Parser;
use hypha_tests::Proc;
use hypha_tests::impair::ImpairedLink;
use hypha_tests::netns::Lab;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "hypha-blackout")]
struct Args {
    /// The `hypha` program.
    #[arg(long)]
    hypha: String,
    /// The `hypha-impair` program.
    #[arg(long)]
    impair: String,
    /// The `hypha-probe` program (the subscriber: it counts gaps by sequence number).
    #[arg(long)]
    probe: String,
    /// tcp, quic or tls… (the subscriber's listener and the publisher's link).
    #[arg(long, default_value = "tcp")]
    proto: String,
    /// How long the link is cut.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Pause between publications (ms).
    #[arg(long, default_value_t = 1)]
    interval_ms: u64,
    /// Samples published before the cut (then the cut, then as many again after it).
    #[arg(long, default_value_t = 2000)]
    before: u64,
    #[arg(long, default_value_t = 1)]
    rounds: u8,
    /// Run the nodes with session acknowledgements off (`HYPHA_ACKS=off`): the figures as they
    /// were before them, from the same build.
    #[arg(long)]
    no_acks: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut rows = Vec::new();
    for round in 0..a.rounds {
        let row = one(&a, round).await?;
        println!("{row}");
        rows.push(row);
    }
    if rows.len() > 1 {
        let med = |k: &str| {
            let mut v: Vec<f64> = rows.iter().filter_map(|r| r[k].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let keys = [
            "published",
            "received",
            "lost",
            "dropped",
            "link_closed",
            "unconfirmed",
            "unreached",
            "uncounted",
            "sub_gaps",
            "back_after_uncut_ms",
        ];
        let m: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|k| (k.to_string(), med(k).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({"figure": "blackout_median", "proto": a.proto, "acks": !a.no_acks, "median": m})
        );
    }
    Ok(())
}

async fn one(a: &Args, round: u8) -> Result<serde_json::Value> {
    let lab = Lab::isolated(2, 40 + round)?;
    let link = ImpairedLink::spawn(&a.impair, &lab, 0, 1, 1, &[]).await?;
    let ep = format!("{}/{}:7447", a.proto, link.b.ip);
    let mut peer = lab.command(1, &a.hypha);
    peer.args(["peer", "--no-mdns", "--listen", &ep])
        .kill_on_drop(true);
    if a.no_acks {
        peer.env("HYPHA_ACKS", "off");
    }
    let mut peer = Proc::spawn("peer", peer)?;
    peer.wait_json(Duration::from_secs(20), |v| v["event"] == "ready")
        .await?;
    let mut sub = lab.command(1, &a.probe);
    sub.args(["sub", "--key", "blk/**", "--connect", &ep])
        .kill_on_drop(true);
    let mut sub = Proc::spawn("sub", sub)?;
    sub.wait_json(Duration::from_secs(20), |v| v["event"] == "ready")
        .await?;
    // Enough samples to run `before` steady ones, the cut, and as many again after it.
    let per_s = 1000 / a.interval_ms.max(1);
    let count = 2 * a.before + a.secs * per_s;
    let mut publisher = lab.command(0, &a.hypha);
    publisher
        .args(["pub", "blk/x", "b {i}", "--no-mdns", "--mode", "client"])
        .args(["--count", &count.to_string()])
        .args(["--interval-ms", &a.interval_ms.to_string()])
        .args(["--wait-ms", "10000", "--connect", &ep])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if a.no_acks {
        publisher.env("HYPHA_ACKS", "off");
    }
    let publisher = tokio::spawn(async move { publisher.output().await });
    let mut seen = HashSet::new();
    let read = async |sub: &mut Proc, seen: &mut HashSet<u64>, wait: Duration| {
        let l = sub.line(wait).await?;
        let v: serde_json::Value = serde_json::from_str(&l).ok()?;
        Some(seen.insert(v["sn"].as_u64()?))
    };
    let t0 = Instant::now();
    while (seen.len() as u64) < a.before {
        read(&mut sub, &mut seen, Duration::from_secs(20))
            .await
            .with_context(|| format!("{} samples before the cut, then none", seen.len()))?;
    }
    link.command("cut").await?;
    let cut = Instant::now();
    let mut during = 0u64;
    while cut.elapsed() < Duration::from_secs(a.secs) {
        let left = Duration::from_secs(a.secs).saturating_sub(cut.elapsed());
        if read(&mut sub, &mut seen, left).await == Some(true) {
            during += 1;
        }
    }
    link.command("uncut").await?;
    let uncut = Instant::now();
    let before_uncut = seen.len();
    let mut back = None;
    let mut done = std::pin::pin!(publisher);
    let out = loop {
        tokio::select! {
            r = &mut done => break r??,
            got = read(&mut sub, &mut seen, Duration::from_secs(60)) => {
                if got == Some(true) && back.is_none() && seen.len() > before_uncut {
                    back = Some(uncut.elapsed());
                }
            }
        }
    };
    // What was in flight when the publisher exited; then the subscriber's own count.
    while read(&mut sub, &mut seen, Duration::from_secs(2))
        .await
        .is_some()
    {}
    sub.signal("TERM")?;
    let summary = sub
        .wait_json(Duration::from_secs(10), |v| v["event"] == "summary")
        .await?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let counted: Vec<u64> = err
        .lines()
        .find(|l| l.starts_with("warning: ") && l.contains(" publications lost: "))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (dropped, link_closed, unconfirmed, unreached) = match counted[..] {
        [_, _, d, c, n, u] => (d, c, n, u),
        _ => (0, 0, 0, 0),
    };
    let received = seen.len() as u64;
    let lost = count.saturating_sub(received);
    let row = serde_json::json!({
        "figure": "blackout", "proto": a.proto, "acks": !a.no_acks, "round": round, "cut_s": a.secs,
        "published": count, "received": received, "lost": lost,
        "dropped": dropped, "link_closed": link_closed, "unconfirmed": unconfirmed,
        "unreached": unreached,
        "uncounted": lost as i64 - (dropped + link_closed + unconfirmed + unreached) as i64,
        "received_during_cut": during,
        "sub_gaps": summary["gaps"], "sub_duplicates": summary["duplicates"],
        "back_after_uncut_ms": back.map(|d| d.as_millis() as u64),
        "pub_exit": out.status.code(), "total_s": t0.elapsed().as_secs_f64(),
        "pub_stderr_tail": err.lines().rev().take(3).collect::<Vec<_>>(),
    });
    drop(sub);
    drop(peer);
    let _ = link.quit().await;
    drop(lab);
    Ok(row)
}
