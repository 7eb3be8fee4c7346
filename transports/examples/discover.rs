//! A tiny node for multi-host discovery tests: listens, announces itself over mDNS, dials every
//! node it finds, and prints one JSON line per event on stdout.
//!
//! ```text
//! cargo run -p hypha-transports --example discover -- [--listen EP]... [--secs N]
//! ```
//!
//! - `--listen EP` (repeatable): endpoints to listen on; `quic/0.0.0.0:0` by default.
//! - `--secs N`: exit after N seconds (30 by default), saying goodbye over mDNS.
//!
//! Lines (`ms` is milliseconds since the start):
//!
//! ```text
//! {"event":"ready","id":"…","endpoints":["quic/0.0.0.0:41234"],"ms":12}
//! {"event":"found","id":"…","mode":"peer","endpoints":["quic/10.0.0.2:41234"],"ms":123}
//! {"event":"connected","id":"…","endpoint":"quic/10.0.0.2:41234","ms":140}
//! {"event":"accepted","remote":"quic/10.0.0.2:50000","ms":141}
//! {"event":"lost","id":"…","ms":2000}
//! ```
//!
//! Logs go to stderr (`RUST_LOG=debug` for details).

use anyhow::{Context, bail};
use hypha_core::id::NodeId;
use hypha_core::wire::Mode;
use hypha_transports::dialer::Dialer;
use hypha_transports::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent};
use hypha_transports::{Endpoint, TlsConfig, listen};
use std::io::Read;
use std::time::{Duration, Instant};

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(eps: &[Endpoint]) -> String {
    let items: Vec<String> = eps.iter().map(|e| json_str(&e.to_string())).collect();
    format!("[{}]", items.join(","))
}

/// A random node id from the OS.
fn random_id() -> anyhow::Result<NodeId> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(NodeId(b))
}

struct Args {
    listen: Vec<Endpoint>,
    secs: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        listen: Vec::new(),
        secs: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().context("--listen needs an endpoint")?;
                args.listen
                    .push(v.parse().with_context(|| format!("--listen {v}"))?);
            }
            "--secs" => {
                let v = it.next().context("--secs needs a number")?;
                args.secs = v.parse().with_context(|| format!("--secs {v}"))?;
            }
            "-h" | "--help" => {
                println!("usage: discover [--listen EP]... [--secs N]");
                std::process::exit(0);
            }
            other => {
                bail!("unknown argument {other:?} (usage: discover [--listen EP]... [--secs N])")
            }
        }
    }
    if args.listen.is_empty() {
        args.listen.push("quic/0.0.0.0:0".parse()?);
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let start = Instant::now();
    let ms = move || start.elapsed().as_millis();
    let args = parse_args()?;
    let id = random_id()?;
    let tls = TlsConfig::default();

    let mut bound = Vec::new();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(64);
    for ep in &args.listen {
        let mut l = listen(ep, &tls)
            .await
            .with_context(|| format!("listening on {ep}"))?;
        bound.push(l.local_endpoint().clone());
        let tx = accepted_tx.clone();
        tokio::spawn(async move {
            while let Some(link) = l.accept().await {
                if tx.send(link).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(accepted_tx);

    let (discovery, mut events) =
        Discovery::start(DiscoveryConfig::new(id, Mode::Peer, bound.clone()))?;
    let (dialer, mut dialed) = Dialer::new(id, tls);
    println!(
        r#"{{"event":"ready","id":{},"endpoints":{},"ms":{}}}"#,
        json_str(&id.to_string()),
        json_list(&bound),
        ms()
    );

    // Links are kept open until exit.
    let mut links = Vec::new();
    let stop = tokio::time::sleep(Duration::from_secs(args.secs));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Some(DiscoveryEvent::Found { node_id, mode, endpoints }) => {
                    println!(
                        r#"{{"event":"found","id":{},"mode":{},"endpoints":{},"ms":{}}}"#,
                        json_str(&node_id.to_string()),
                        json_str(mode.as_str()),
                        json_list(&endpoints),
                        ms()
                    );
                    dialer.dial(Some(node_id), endpoints);
                }
                Some(DiscoveryEvent::Lost { node_id }) => {
                    println!(
                        r#"{{"event":"lost","id":{},"ms":{}}}"#,
                        json_str(&node_id.to_string()),
                        ms()
                    );
                    dialer.forget(Some(node_id), &[]);
                }
                None => bail!("discovery stopped"),
            },
            d = dialed.recv() => {
                let Some(d) = d else { bail!("dialer stopped") };
                let who = d.node_id.map(|n| n.to_string()).unwrap_or_default();
                println!(
                    r#"{{"event":"connected","id":{},"endpoint":{},"ms":{}}}"#,
                    json_str(&who),
                    json_str(&d.endpoint.to_string()),
                    ms()
                );
                if let Some(n) = d.node_id {
                    dialer.set_connected(n, true);
                }
                links.push(d.link);
            }
            Some(link) = accepted.recv() => {
                println!(
                    r#"{{"event":"accepted","remote":{},"ms":{}}}"#,
                    json_str(&link.info.remote.to_string()),
                    ms()
                );
                links.push(link);
            }
        }
    }
    discovery.stop().await;
    drop(links);
    Ok(())
}
