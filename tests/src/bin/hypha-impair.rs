//! `hypha-impair`: a userspace network impairment bridge for multi-host tests, where the kernel
//! has no `netem`.
//!
//! It creates two TUN devices (layer 3, no packet-information header), moves each into a network
//! namespace and configures it (`--a-netns`, `--a-addr`, …, with `ip`), then forwards every IP
//! packet read from one to the other, with settings of its own for each direction:
//!
//! - a fixed one-way delay (`--delay 50ms`) and optional jitter (`--jitter 5ms`: uniform in
//!   ±5 ms, never below zero; packets keep their order unless `--reorder`);
//! - random loss (`--loss 30`, in percent) drawn from a seeded generator (`--seed`): the same seed
//!   and the same packets give the same losses;
//! - a silent cut: everything is dropped, including what is queued, until uncut — no ICMP, no
//!   reset, like a pulled cable;
//! - a bounded delay queue (`--queue`, packets per direction; a packet arriving when it is full
//!   is dropped and counted).
//!
//! Per-direction overrides: `--a2b "delay=100ms loss=1"`, `--b2a "cut=on"`.
//!
//! Usage (as root), a 20 ms WAN with 1 % loss between two namespaces:
//!
//! ```text
//! ip netns add left; ip netns add right
//! hypha-impair --a-netns left --a-addr 10.77.0.1/24 --b-netns right --b-addr 10.77.0.2/24 \
//!     --delay 20ms --loss 1 --seed 7 --control /tmp/impair.sock
//! ip netns exec left ping 10.77.0.2        # ~40 ms round trip
//! echo cut | socat - UNIX-CONNECT:/tmp/impair.sock   # or type `cut` on its stdin
//! ```
//!
//! Control, one command per line, on stdin and on the Unix socket `--control PATH` (each answered
//! with one JSON line `{"event":"reply","ok":…}` holding the settings and counters): `stats`,
//! `cut [DIR]`, `uncut [DIR]`, `delay DUR [DIR]`, `jitter DUR [DIR]`, `loss PCT [DIR]`,
//! `set [DIR] delay=… jitter=… loss=… cut=on|off`, `help`, `quit`; DIR is `a2b`, `b2a` or
//! `both` (the default). Signals: SIGUSR1 prints the counters, SIGUSR2 toggles a cut of both
//! directions, SIGTERM/SIGINT (and `quit`) print the final counters as `{"event":"exit",…}` and
//! exit. The end of stdin is not a reason to exit. Stdout carries only JSON lines: `ready` once
//! the interfaces are up (with the names and addresses), `reply`, `stats`, `cut`, `exit`.
//!
//! Counters, per direction (`a_to_b`, `b_to_a`): `read`, `forwarded`, `forwarded_bytes`,
//! `dropped_loss`, `dropped_cut`, `dropped_overflow`, `write_errors`, `read_errors`, `dropped`
//! (their sum, read errors aside) and `queued` now.
//!
//! What it cannot do: bandwidth limits, duplication, corruption or burst (Gilbert-Elliott) loss;
//! link-layer traffic (it is layer 3: no ARP, no broadcast, and each side needs a route to the
//! other through its TUN interface, which `--x-addr` with a prefix gives for one subnet); more
//! than two sides. Timing comes from a thread sleeping until each release: expect tens of
//! microseconds of error, more under load. IPv6 is disabled on an interface that is given no
//! IPv6 address, so that no stray router solicitation or MLD report is counted. The TUN
//! interfaces vanish when the program exits, however it exits.

use clap::Parser;
use hypha_tests::impair::{self, Dir, Link};
use std::path::PathBuf;
use std::process::Command as Cmd;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A userspace impairment bridge between two TUN devices: per-direction delay, jitter, seeded
/// loss and a silent cut, with counters (see the top of src/bin/hypha-impair.rs).
#[derive(Parser, Debug)]
#[command(name = "hypha-impair")]
struct Args {
    /// Name of side A's TUN interface (at most 15 characters).
    #[arg(long, default_value_t = default_name('a'))]
    a_name: String,
    /// Namespace (`ip netns` name) to move side A's interface into; none: stays here.
    #[arg(long)]
    a_netns: Option<String>,
    /// Address with prefix for side A's interface (repeatable), e.g. 10.77.0.1/24.
    #[arg(long)]
    a_addr: Vec<String>,
    /// Name of side B's TUN interface.
    #[arg(long, default_value_t = default_name('b'))]
    b_name: String,
    /// Namespace to move side B's interface into.
    #[arg(long)]
    b_netns: Option<String>,
    /// Address with prefix for side B's interface (repeatable).
    #[arg(long)]
    b_addr: Vec<String>,
    /// MTU of both interfaces.
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// One-way delay in both directions (50ms, 1.5s, 200us; a bare number is ms).
    #[arg(long, default_value = "0ms", value_parser = impair::parse_duration)]
    delay: std::time::Duration,
    /// Jitter in both directions: each delay is uniform in delay ± jitter.
    #[arg(long, default_value = "0ms", value_parser = impair::parse_duration)]
    jitter: std::time::Duration,
    /// Random loss in both directions, in percent.
    #[arg(long, default_value = "0", value_parser = impair::parse_loss)]
    loss: f64,
    /// Settings for A to B only, over the above: "delay=100ms jitter=0 loss=1 cut=off".
    #[arg(long)]
    a2b: Option<String>,
    /// Settings for B to A only.
    #[arg(long)]
    b2a: Option<String>,
    /// Seed of the loss and jitter draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packets each direction's delay queue holds at most.
    #[arg(long, default_value_t = 20_000)]
    queue: usize,
    /// Let jitter reorder packets (by default a packet never overtakes an earlier one).
    #[arg(long)]
    reorder: bool,
    /// A Unix socket to listen on for control commands (removed at exit).
    #[arg(long)]
    control: Option<PathBuf>,
}

fn default_name(side: char) -> String {
    format!("hyimp{}{side}", std::process::id() % 1_000_000)
}

fn print(v: &serde_json::Value) {
    println!("{v}");
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let o = Cmd::new(program).args(args).output()?;
    anyhow::ensure!(
        o.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

/// `ip [-n ns] args…`.
fn ip(ns: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    let mut all: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        all.extend(["-n", ns]);
    }
    all.extend(args);
    run("ip", &all)
}

/// Creates a TUN device, moves and configures its interface; returns it.
fn side(
    name: &str,
    netns: Option<&str>,
    addrs: &[String],
    mtu: u16,
) -> anyhow::Result<tun::Device> {
    let mut config = tun::Configuration::default();
    config.tun_name(name).mtu(mtu).layer(tun::Layer::L3);
    let dev = tun::create(&config)
        .map_err(|e| anyhow::anyhow!("cannot create the TUN device {name}: {e}"))?;
    if let Some(ns) = netns {
        ip(None, &["link", "set", name, "netns", ns])?;
    }
    if !addrs.iter().any(|a| a.contains(':')) {
        // No IPv6 wanted: no link-local address, router solicitations or MLD reports either.
        let key = format!("net.ipv6.conf.{name}.disable_ipv6=1");
        let r = match netns {
            Some(ns) => run("ip", &["netns", "exec", ns, "sysctl", "-qw", &key]),
            None => run("sysctl", &["-qw", &key]),
        };
        if let Err(e) = r {
            eprintln!("hypha-impair: cannot disable IPv6 on {name} (continuing): {e}");
        }
    }
    for a in addrs {
        ip(netns, &["addr", "add", a, "dev", name])?;
    }
    ip(netns, &["link", "set", name, "mtu", &mtu.to_string(), "up"])?;
    Ok(dev)
}

fn settings(spec: &Option<String>) -> anyhow::Result<Vec<impair::Change>> {
    match spec {
        None => Ok(Vec::new()),
        Some(s) => impair::parse_changes(s.split_whitespace()).map_err(|e| anyhow::anyhow!(e)),
    }
}

enum Event {
    Quit,
}

async fn serve_control(
    link: Arc<Link>,
    listener: tokio::net::UnixListener,
    tx: mpsc::Sender<Event>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (link, tx) = (Arc::clone(&link), tx.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            // Lines are bounded: a peer sending an endless line is cut off, not buffered.
            // Bytes, not text: a line that is not UTF-8 is answered with an error like any other.
            let mut lines = BufReader::new(tokio::io::AsyncReadExt::take(r, 1 << 20)).split(b'\n');
            while let Ok(Some(line)) = lines.next_segment().await {
                let (reply, quit) = link.handle(&String::from_utf8_lossy(&line));
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
                if quit {
                    let _ = w.flush().await;
                    let _ = tx.send(Event::Quit).await;
                    break;
                }
            }
        });
    }
}

async fn serve_stdin(link: Arc<Link>, tx: mpsc::Sender<Event>) {
    let mut lines = BufReader::new(tokio::io::stdin()).split(b'\n');
    loop {
        match lines.next_segment().await {
            Ok(Some(line)) => {
                let (reply, quit) = link.handle(&String::from_utf8_lossy(&line));
                print(&reply);
                if quit {
                    let _ = tx.send(Event::Quit).await;
                    return;
                }
            }
            // End of stdin (or unreadable): control goes on through the socket and signals.
            Ok(None) | Err(_) => return,
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hypha-impair: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(bridge(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hypha-impair: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bridge(args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let link = Arc::new(Link::new(args.queue, args.reorder));
    let common = [
        impair::Change::Delay(args.delay),
        impair::Change::Jitter(args.jitter),
        impair::Change::Loss(args.loss),
    ];
    link.apply(&Dir::BOTH, &common);
    link.apply(&[Dir::AToB], &settings(&args.a2b)?);
    link.apply(&[Dir::BToA], &settings(&args.b2a)?);

    let a = side(
        &args.a_name,
        args.a_netns.as_deref(),
        &args.a_addr,
        args.mtu,
    )?;
    let b = side(
        &args.b_name,
        args.b_netns.as_deref(),
        &args.b_addr,
        args.mtu,
    )?;
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    impair::start(Arc::clone(&link), Dir::AToB, a_read, b_write, args.seed)?;
    impair::start(Arc::clone(&link), Dir::BToA, b_read, a_write, args.seed)?;

    let (tx, mut rx) = mpsc::channel(4);
    if let Some(path) = &args.control {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        tokio::spawn(serve_control(Arc::clone(&link), listener, tx.clone()));
    }
    tokio::spawn(serve_stdin(Arc::clone(&link), tx.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;

    let mut ready = link.json("ready");
    ready["pid"] = std::process::id().into();
    ready["seed"] = args.seed.into();
    ready["a"] =
        serde_json::json!({"tun": args.a_name, "netns": args.a_netns, "addrs": args.a_addr});
    ready["b"] =
        serde_json::json!({"tun": args.b_name, "netns": args.b_netns, "addrs": args.b_addr});
    ready["control"] = args
        .control
        .as_ref()
        .map(|p| p.display().to_string())
        .into();
    print(&ready);

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(Event::Quit) = rx.recv() => break,
            _ = usr1.recv() => print(&link.json("stats")),
            _ = usr2.recv() => {
                let on = !(link.dir(Dir::AToB).is_cut() && link.dir(Dir::BToA).is_cut());
                link.apply(&Dir::BOTH, &[impair::Change::Cut(on)]);
                print(&link.json("cut"));
            }
        }
    }
    print(&link.json("exit"));
    if let Some(path) = &args.control {
        let _ = std::fs::remove_file(path);
    }
    // The forwarding threads block in reads: exit without joining them; the TUN devices close.
    std::process::exit(0)
}
