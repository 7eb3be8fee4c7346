//! The device node for real: `no-std/firmware`'s `qemu_node` runs on an emulated Cortex-M4
//! (QEMU `netduinoplus2`), its UART on a TCP socket; a std `hypha router` attaches to it with
//! `--connect serial+tcp/…`, and the host drives it with `hypha sub`, `hypha get` and `hypha
//! put`.
//!
//! The QEMU tests need `qemu-system-arm` and the `thumbv7em-none-eabihf` target (`.ci/run`
//! installs both): under `CI=true` their absence fails them, elsewhere it is a printed skip.
//! `a_host_built_device_node_over_serial_tcp` runs the same node built for the host, on a thread
//! behind a TCP socket, and needs nothing. The `*_through_a_pty_bridge` variants put a real tty
//! in the path: `socat` bridges the UART's (or the host-built device's) TCP socket to a pty
//! pair and the router opens `serial//dev/pts/N#baud=115200`; they need `socat` (`.ci/run`
//! installs it) on the same terms.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, cli, free_port, require_or_skip, run_cli};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);
/// The firmware's node id (no-std/firmware/src/bin/qemu_node.rs).
const DEVICE_ID: &str = "00d00000000000000000000000000001";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the firmware is built: its own target directory beside the workspace's (the outer
/// `cargo test` may hold the workspace's lock). `.ci/run` builds into the same place first.
fn firmware_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("firmware")
}

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let qemu = std::process::Command::new("qemu-system-arm")
        .arg("--version")
        .output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Some("qemu-system-arm is not installed (apt-get install qemu-system-arm)".into());
    }
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let lib = Path::new(&sysroot).join("lib/rustlib/thumbv7em-none-eabihf");
    if !lib.exists() {
        return Some(
            "the thumbv7em-none-eabihf target is not installed (rustup target add)".into(),
        );
    }
    None
}

/// Builds the firmware (release: the size-optimised, budget-linked profile); its ELF.
fn build_firmware() -> PathBuf {
    let dir = workspace().join("no-std/firmware");
    let target = firmware_target_dir();
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--release", "--bin", "qemu_node", "--target-dir"])
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "firmware build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("thumbv7em-none-eabihf/release/qemu_node")
}

/// QEMU with the firmware, its UART a TCP server on `port` (the guest waits for a client).
fn qemu(elf: &Path, port: u16) -> Proc {
    let mut c = Command::new("qemu-system-arm");
    c.args([
        "-M",
        "netduinoplus2",
        "-nographic",
        "-monitor",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-serial",
    ])
    .arg(format!("tcp:127.0.0.1:{port},server=on,wait=on"))
    .arg("-kernel")
    .arg(elf);
    Proc::spawn("qemu", c).unwrap()
}

/// A `hypha router` whose stderr (its log) is read line by line.
struct Router {
    child: Child,
    log: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    endpoint: String,
    /// Every endpoint it listens on, from its ready line.
    listening: Vec<String>,
}

impl Router {
    async fn start(device: &str) -> Router {
        Router::start_with(&["--listen", "tcp/127.0.0.1:0", "--connect", device]).await
    }

    /// `hypha router ARGS`; the first `--listen` is where the CLI's clients connect.
    async fn start_with(args: &[&str]) -> Router {
        let mut c = cli(CLI, &[&["router"], args].concat());
        c.env("HYPHA_LOG", "info,hypha_transports::serial=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = c.spawn().unwrap();
        let (tx, log) = mpsc::unbounded_channel();
        let err = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx.send(l);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(T, out.next_line())
            .await
            .expect("router ready in time")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
        let endpoint = hypha_tests::listening_endpoint(&v).unwrap();
        let listening = v["listening"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Router {
            child,
            log,
            seen: Vec::new(),
            endpoint,
            listening,
        }
    }

    /// Waits for a log line satisfying `pred`.
    async fn wait_log(&mut self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.log.recv()).await {
                Ok(Some(l)) => {
                    let hit = pred(&l);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                _ => panic!(
                    "router: no log line for {what} within {T:?}: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Every log line so far.
    fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.log.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    fn client(&self) -> [&str; 4] {
        ["--mode", "client", "--connect", self.endpoint.as_str()]
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn connected(who: &str) -> impl Fn(&str) -> bool + '_ {
    move |l: &str| l.contains(" connected") && l.contains(who)
}

/// Subscribes to `device/temp` with the CLI, starts the device's 10 samples with `hypha put
/// ctl/start`, and returns the payloads received (within `T`, and 300 ms more for any extra).
async fn ten_samples(router: &mut Router) -> Vec<String> {
    let mut args = vec!["sub", "device/temp", "--json"];
    args.extend(router.client());
    let mut sub = Proc::spawn("sub", cli(CLI, &args)).unwrap();
    // The sub's link to the router is up (its subscription follows on the same link, before
    // the put below can even start).
    router
        .wait_log("the subscriber's link", |l| {
            l.contains(" connected") && l.contains("client") && !l.contains(DEVICE_ID)
        })
        .await;
    let mut put = vec!["put", "ctl/start", "1", "--wait-ms", "10000"];
    put.extend(router.client());
    let (code, _, err) = run_cli(CLI, &put).await.unwrap();
    assert_eq!(code, 0, "put ctl/start: {err}");
    assert!(err.contains("reached 1 destination"), "{err}");
    let mut got = Vec::new();
    while got.len() < 10 {
        let l = sub
            .line(T)
            .await
            .unwrap_or_else(|| panic!("only {got:?} within {T:?}"));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["key"], "device/temp");
        got.push(v["payload"].as_str().unwrap().to_string());
    }
    if let Some(extra) = sub.line(Duration::from_millis(300)).await {
        got.push(extra);
    }
    got
}

async fn device_info(router: &Router) -> String {
    let mut get = vec!["get", "device/info", "--json", "--timeout-ms", "5000"];
    get.extend(router.client());
    let (code, out, err) = run_cli(CLI, &get).await.unwrap();
    assert_eq!(code, 0, "get device/info: {err}");
    let replies: Vec<&str> = out.lines().collect();
    assert_eq!(replies.len(), 1, "exactly one reply: {out}");
    let v: serde_json::Value = serde_json::from_str(replies[0]).unwrap();
    assert_eq!(v["key"], "device/info");
    v["payload"].as_str().unwrap().to_string()
}

/// `name=value` from a report line.
fn field(line: &str, name: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .parse()
        .unwrap()
}

async fn exit_device(router: &Router, qemu: &mut Proc, code: &str) -> String {
    let mut put = vec!["put", "ctl/exit", code, "--wait-ms", "10000"];
    put.extend(router.client());
    let (c, _, err) = run_cli(CLI, &put).await.unwrap();
    assert_eq!(c, 0, "put ctl/exit: {err}");
    let status = qemu.exit_code(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        status,
        Some(code.parse().unwrap()),
        "QEMU's exit status: {:?}",
        qemu.seen
    );
    let mut report = None;
    while let Some(l) = qemu.line(Duration::from_millis(200)).await {
        if l.starts_with("hypha-nostd exit") {
            report = Some(l);
        }
    }
    report
        .or_else(|| {
            qemu.seen
                .iter()
                .find(|l| l.starts_with("hypha-nostd exit"))
                .cloned()
        })
        .unwrap_or_else(|| panic!("no exit report from the firmware: {:?}", qemu.seen))
}

#[tokio::test]
async fn device_node_on_qemu_publishes_answers_and_exits_with_the_code_sent() {
    if !require_or_skip(missing()) {
        return;
    }
    let elf = build_firmware();
    let port = free_port(); // QEMU's server port is given on its command line
    let mut qemu = qemu(&elf, port);
    let mut router = Router::start(&format!("serial+tcp/127.0.0.1:{port}")).await;
    router.wait_log("the device", connected(DEVICE_ID)).await;

    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(got, want, "10 samples, in order, no duplicate");

    let info = device_info(&router).await;
    assert!(info.starts_with("hypha-nostd "), "{info}");
    let (hwm, stat, flash) = (
        field(&info, "hwm"),
        field(&info, "static"),
        field(&info, "flash"),
    );
    eprintln!("device footprint: flash={flash} B, static RAM={stat} B, stack high-water={hwm} B");
    assert!(stat + hwm <= 4096, "RAM budget: {stat} + {hwm} > 4096");
    assert!(flash <= 16_384, "flash budget: {flash} > 16384");

    let report = exit_device(&router, &mut qemu, "0").await;
    for f in ["crc_errors", "cobs_errors", "overflows"] {
        assert_eq!(field(&report, f), 0, "device side: {report}");
    }
    assert_eq!(field(&report, "connects"), 1, "{report}");
    let log = router.drain();
    assert!(
        !log.iter().any(|l| l.contains("serial framing error")),
        "std side framing errors: {log:#?}"
    );
}

/// A TCP proxy between the router and QEMU that injects junk and corrupted frames between the
/// real ones (router → device), without touching the real frames.
async fn noisy_proxy(upstream: u16) -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let Ok((down, _)) = l.accept().await else {
            return;
        };
        // QEMU may not listen yet: retry (bounded).
        let mut up = None;
        for _ in 0..200 {
            match tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                Ok(s) => {
                    up = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let up = up.expect("QEMU's UART socket within 10 s");
        let (mut dr, mut dw) = down.into_split();
        let (mut ur, mut uw) = up.into_split();
        let back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut ur, &mut dw).await;
        });
        let mut buf = vec![0u8; 4096];
        let mut n_chunks = 0u32;
        while let Ok(n) = dr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            n_chunks += 1;
            // Noise only right after a delimiter: it lands between frames (or ends in a
            // delimiter of its own before the rest of a frame), never inside a real one.
            if buf[n - 1] == 0 && n_chunks % 2 == 0 {
                let mut frame = vec![0u8; 32];
                let m = hypha_core::framing::encode(b"not a batch", &mut frame).unwrap();
                frame[4] ^= 0x20; // a flipped bit: the CRC catches it
                let mut noise = vec![0x55, 0xAA, 0x13, 0x00];
                noise.extend_from_slice(&frame[..m]);
                if uw.write_all(&noise).await.is_err() {
                    break;
                }
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        back.abort();
    });
    (port, task)
}

#[tokio::test]
async fn line_noise_is_counted_and_the_session_survives() {
    if !require_or_skip(missing()) {
        return;
    }
    let elf = build_firmware();
    let port = free_port();
    let mut qemu = qemu(&elf, port);
    let (proxy, _proxy_task) = noisy_proxy(port).await;
    let mut router = Router::start(&format!("serial+tcp/127.0.0.1:{proxy}")).await;
    router.wait_log("the device", connected(DEVICE_ID)).await;
    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(got, want);
    let info = device_info(&router).await;
    assert!(info.starts_with("hypha-nostd "), "{info}");
    let report = exit_device(&router, &mut qemu, "0").await;
    let errors = field(&report, "crc_errors") + field(&report, "cobs_errors");
    assert!(errors >= 2, "the injected noise is counted: {report}");
    assert_eq!(
        field(&report, "connects"),
        1,
        "the session survived: {report}"
    );
}

#[tokio::test]
async fn a_rebooted_device_is_taken_back_by_the_router() {
    if !require_or_skip(missing()) {
        return;
    }
    let elf = build_firmware();
    let port = free_port();
    let mut first = qemu(&elf, port);
    let mut router = Router::start(&format!("serial+tcp/127.0.0.1:{port}")).await;
    router.wait_log("the device", connected(DEVICE_ID)).await;
    // Power cut: QEMU is killed mid-session, then the board boots again on the same UART.
    first.signal("KILL").unwrap();
    let _ = first.exit_code(T).await;
    router
        .wait_log("the old session's end", |l| {
            l.contains("disconnected") && l.contains(DEVICE_ID)
        })
        .await;
    let mut second = qemu(&elf, port);
    router
        .wait_log("the device again", connected(DEVICE_ID))
        .await;
    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(
        got, want,
        "the rebooted device's declarations were replayed"
    );
    let report = exit_device(&router, &mut second, "3").await;
    assert_eq!(field(&report, "code"), 3);
}

/// The same device node, built for the host and run on a thread over a TCP socket standing in
/// for the UART: covers `serial+tcp/`, the router's dial path and the node on any machine,
/// QEMU or not.
fn host_device(l: std::net::TcpListener) -> std::thread::JoinHandle<(u32, String)> {
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        run_host_device(HostLine::Stream(s))
    })
}

/// The device's side of its link: a byte stream (the UART's stand-in) or datagrams.
enum HostLine {
    Stream(std::net::TcpStream),
    /// A UDP socket connected to the router's `udp/` endpoint: one batch per datagram.
    Datagram(std::net::UdpSocket),
}

/// The device application (publish 10 samples on `ctl/start`, answer `device/info`, exit
/// with the code in `ctl/exit`) over `line`; the exit code (`u32::MAX` if the line closed)
/// and the node's framing counters and connects.
fn run_host_device(mut line: HostLine) -> (u32, String) {
    use hypha_nostd::{Config, Event, Node, rx_buffer_len, tx_buffer_len};
    use std::io::{Read, Write};
    let mut rx = vec![0u8; rx_buffer_len(256)];
    let mut tx = vec![0u8; tx_buffer_len(256)];
    let cfg = Config::new(hypha_core::id::NodeId::from_u128(2 | (0xD0 << 112)));
    let mut node: Node<'_, 4, 2, 2, 4> = Node::new(cfg, &mut rx, &mut tx);
    let temp = node.declare_publisher("device/temp").unwrap();
    node.declare_subscriber("ctl/**").unwrap();
    node.declare_queryable("device/info").unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 2048];
    let (mut started, mut published) = (false, 0u32);
    let mut query = None;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "host device: no exit"
        );
        let now = hypha_nostd::Instant::from_micros(t0.elapsed().as_micros() as u64);
        let n = match &mut line {
            HostLine::Stream(s) => match s.read(&mut buf) {
                // The std side hung up: no exit code was sent (u32::MAX says so).
                Ok(0) => return (u32::MAX, format!("{:?} line closed", node.framing())),
                Ok(n) => n,
                Err(_) => 0,
            },
            HostLine::Datagram(s) => s.recv(&mut buf).unwrap_or(0),
        };
        let mut exit = None;
        let mut on_events = |node: &mut Node<'_, 4, 2, 2, 4>| {
            while let Some(ev) = node.poll_event() {
                match ev {
                    Event::Sample {
                        key: "ctl/start", ..
                    } => started = true,
                    Event::Sample {
                        key: "ctl/exit",
                        payload,
                        ..
                    } => exit = Some(std::str::from_utf8(payload).unwrap().parse().unwrap()),
                    Event::Query { id, .. } => query = Some(id),
                    _ => {}
                }
            }
        };
        match &line {
            HostLine::Stream(_) => {
                let mut fed = 0;
                loop {
                    fed += node.handle_rx(now, &buf[fed..n]);
                    on_events(&mut node);
                    if fed >= n {
                        break;
                    }
                }
            }
            HostLine::Datagram(_) => {
                if n > 0 {
                    while !node.handle_datagram(now, &buf[..n]) {
                        on_events(&mut node);
                    }
                }
                on_events(&mut node);
            }
        }
        if let Some(q) = query {
            if node.reply(q, "device/info", b"hypha-nostd host").is_ok() {
                node.reply_final(q).unwrap();
                query = None;
            }
        }
        if started
            && published < 10
            && node
                .put(temp, format!("sample-{published}").as_bytes())
                .is_ok()
        {
            published += 1;
        }
        match &mut line {
            HostLine::Stream(s) => {
                while let Some(b) = node.poll_transmit(now) {
                    s.write_all(b).unwrap();
                }
            }
            HostLine::Datagram(s) => {
                while let Some(b) = node.poll_transmit_datagram(now) {
                    // Nobody listening yet (ICMP unreachable): the Init is resent.
                    let _ = s.send(b);
                }
            }
        }
        if let Some(code) = exit {
            return (
                code,
                format!("{:?} connects={}", node.framing(), node.stats().connects),
            );
        }
    }
}

#[tokio::test]
async fn a_host_built_device_node_over_serial_tcp() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dev = host_device(l);
    let mut router = Router::start(&format!("serial+tcp/127.0.0.1:{port}")).await;
    router
        .wait_log("the device", connected("00d00000000000000000000000000002"))
        .await;
    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(device_info(&router).await, "hypha-nostd host");
    let mut put = vec!["put", "ctl/exit", "5", "--wait-ms", "10000"];
    put.extend(router.client());
    let (c, _, err) = run_cli(CLI, &put).await.unwrap();
    assert_eq!(c, 0, "{err}");
    let (code, stats) = tokio::task::spawn_blocking(move || dev.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 5);
    assert!(
        stats.contains("crc_errors: 0, cobs_errors: 0, overflows: 0")
            && stats.ends_with("connects=1"),
        "{stats}"
    );
    assert!(
        !router
            .drain()
            .iter()
            .any(|l| l.contains("serial framing error"))
    );
}

/// `hypha info` reports the process's serial framing counters: a node attached to a (host-built)
/// device through a line that delivers junk and a corrupted frame before the device's bytes
/// counts them, and the session still comes up.
#[tokio::test]
async fn hypha_info_reports_serial_framing_errors() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let device_port = l.local_addr().unwrap().port();
    let dev = host_device(l);
    // The "line": junk, then a frame with a flipped bit, then the device's bytes both ways.
    let line = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let line_port = line.local_addr().unwrap().port();
    let _line = tokio::spawn(async move {
        let (mut std_side, _) = line.accept().await.unwrap();
        let mut frame = vec![0u8; 32];
        let m = hypha_core::framing::encode(b"not a batch", &mut frame).unwrap();
        frame[4] ^= 0x20;
        let mut noise = vec![0x55, 0xAA, 0x13, 0x00];
        noise.extend_from_slice(&frame[..m]);
        std_side.write_all(&noise).await.unwrap();
        let mut device = tokio::net::TcpStream::connect(("127.0.0.1", device_port))
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut std_side, &mut device).await;
    });
    let ep = format!("serial+tcp/127.0.0.1:{line_port}");
    let args = [
        "info",
        "--json",
        "--mode",
        "peer",
        "--connect",
        ep.as_str(),
        "--wait-ms",
        "1500",
    ];
    let (c, out, err) = run_cli(CLI, &args).await.unwrap();
    assert_eq!(c, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let links = info["links"].as_array().unwrap();
    assert!(
        links
            .iter()
            .any(|l| l["node"] == "00d00000000000000000000000000002"),
        "the device's session came up: {info}"
    );
    let f = &info["serial_framing"];
    let errors = f["crc_errors"].as_u64().unwrap() + f["cobs_errors"].as_u64().unwrap();
    assert!(
        errors >= 2,
        "junk and the corrupted frame are counted: {info}"
    );
    assert_eq!(f["overflows"], 0, "{info}");
    assert!(f["frames"].as_u64().unwrap() >= 1, "{info}");
    // The device saw a clean line, then the hang-up.
    let (code, stats) = tokio::task::spawn_blocking(move || dev.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, u32::MAX, "{stats}");
    assert!(
        stats.contains("crc_errors: 0, cobs_errors: 0, overflows: 0"),
        "{stats}"
    );
}

/// The same noisy line, seen through the admin space: `@/<id>/links/<device>` of the node the
/// line is attached to carries the link's own `framing` counters (from the link's probe, not
/// the process-wide totals), junk and the corrupted frame counted, the good frames too.
#[tokio::test]
async fn admin_space_reports_a_serial_links_framing_errors() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let device_port = l.local_addr().unwrap().port();
    let dev = host_device(l);
    let line = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let line_port = line.local_addr().unwrap().port();
    let _line = tokio::spawn(async move {
        let (mut std_side, _) = line.accept().await.unwrap();
        let mut frame = vec![0u8; 32];
        let m = hypha_core::framing::encode(b"not a batch", &mut frame).unwrap();
        frame[4] ^= 0x20;
        let mut noise = vec![0x55, 0xAA, 0x13, 0x00];
        noise.extend_from_slice(&frame[..m]);
        std_side.write_all(&noise).await.unwrap();
        let mut device = tokio::net::TcpStream::connect(("127.0.0.1", device_port))
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut std_side, &mut device).await;
    });
    let mut c = hypha::Config::default();
    c.mdns = false;
    c.connect = vec![format!("serial+tcp/127.0.0.1:{line_port}").parse().unwrap()];
    let s = hypha::open(c).await.unwrap();
    let key = format!("@/{}/links/00d00000000000000000000000000002", s.id());
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let replies = s
            .get(key.as_str())
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .unwrap()
            .collect()
            .await;
        if let Some(Ok(sample)) = replies.into_iter().next().map(|r| r.result) {
            last = String::from_utf8(sample.payload.to_vec()).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let link: serde_json::Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last:?}"));
    assert_eq!(link["transport"], "serial+tcp", "{link}");
    let f = &link["framing"];
    let errors = f["crc_errors"].as_u64().unwrap() + f["cobs_errors"].as_u64().unwrap();
    assert!(errors >= 2, "junk and the corrupted frame: {link}");
    assert_eq!(f["overflows"], 0, "{link}");
    assert!(f["frames"].as_u64().unwrap() >= 1, "{link}");
    assert!(
        link.get("rtt_us").is_none(),
        "no RTT on a serial link: {link}"
    );
    drop(s);
    let _ = tokio::task::spawn_blocking(move || dev.join().unwrap()).await;
}

/// The device node over UDP, as a board with a network stack attaches: one batch per datagram,
/// unframed (`Node::poll_transmit_datagram` / `handle_datagram`), to a `hypha router`
/// listening on `udp/`; the CLI drives it as over the serial line.
#[tokio::test]
async fn a_host_built_device_node_over_udp_datagrams() {
    let mut router =
        Router::start_with(&["--listen", "tcp/127.0.0.1:0", "--listen", "udp/127.0.0.1:0"]).await;
    let udp = router
        .listening
        .iter()
        .find_map(|e| e.strip_prefix("udp/"))
        .unwrap_or_else(|| panic!("no udp/ endpoint in {:?}", router.listening))
        .to_string();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(&udp).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let dev = std::thread::spawn(move || run_host_device(HostLine::Datagram(s)));
    router
        .wait_log("the device", connected("00d00000000000000000000000000002"))
        .await;
    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(got, want, "10 samples, in order, no duplicate");
    assert_eq!(device_info(&router).await, "hypha-nostd host");
    let mut put = vec!["put", "ctl/exit", "7", "--wait-ms", "10000"];
    put.extend(router.client());
    let (c, _, err) = run_cli(CLI, &put).await.unwrap();
    assert_eq!(c, 0, "{err}");
    let (code, stats) = tokio::task::spawn_blocking(move || dev.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 7);
    // No framing on datagrams: the deframer only took whole datagrams (none too large).
    assert!(
        stats.contains("crc_errors: 0, cobs_errors: 0, overflows: 0")
            && stats.ends_with("connects=1"),
        "{stats}"
    );
}

// ---- pty bridge: the device's bytes reach `hypha router` through a real tty (`serial/`) ----

/// Why the pty-bridge tests cannot run here, if they cannot.
fn missing_socat() -> Option<String> {
    let ok = std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| "socat is not installed (apt-get install socat)".to_string())
}

/// `socat` bridging a new pty pair to the TCP socket at `port` (QEMU's UART, or the host-built
/// device's socket): the router opens the pty's slave end as `serial//dev/pts/N`. socat waits
/// for that open before it connects (`wait-slave`), so QEMU's guest, held until a client
/// connects, starts once the line is owned. Returns socat and the endpoint.
async fn pty_bridge(dir: &Path, port: u16) -> (Proc, String) {
    let link = dir.join("ttyDEVICE");
    let mut c = Command::new("socat");
    c.arg(format!("pty,raw,echo=0,wait-slave,link={}", link.display()))
        .arg(format!("tcp:127.0.0.1:{port}"));
    let socat = Proc::spawn("socat", c).unwrap();
    let deadline = std::time::Instant::now() + T;
    let pts = loop {
        if let Ok(p) = std::fs::read_link(&link) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "socat made no pty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(pts.starts_with("/dev/pts"), "{pts:?}");
    (socat, format!("serial/{}#baud=115200", pts.display()))
}

#[tokio::test]
async fn device_node_on_qemu_through_a_pty_bridge() {
    if !require_or_skip(missing().or_else(missing_socat)) {
        return;
    }
    let elf = build_firmware();
    let port = free_port();
    let mut qemu = qemu(&elf, port);
    let dir = tempfile::tempdir().unwrap();
    let (_socat, ep) = pty_bridge(dir.path(), port).await;
    let mut router = Router::start(&ep).await;
    router.wait_log("the device", connected(DEVICE_ID)).await;
    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(got, want, "10 samples, in order, no duplicate");
    let info = device_info(&router).await;
    assert!(info.starts_with("hypha-nostd "), "{info}");
    let report = exit_device(&router, &mut qemu, "0").await;
    for f in ["crc_errors", "cobs_errors", "overflows"] {
        assert_eq!(field(&report, f), 0, "device side: {report}");
    }
    assert_eq!(field(&report, "connects"), 1, "{report}");
    let log = router.drain();
    assert!(
        !log.iter().any(|l| l.contains("serial framing error")),
        "std side framing errors: {log:#?}"
    );
}

#[tokio::test]
async fn a_host_built_device_node_through_a_pty_bridge() {
    if !require_or_skip(missing_socat()) {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dev = host_device(l);
    let dir = tempfile::tempdir().unwrap();
    let (_socat, ep) = pty_bridge(dir.path(), port).await;
    let mut router = Router::start(&ep).await;
    router
        .wait_log("the device", connected("00d00000000000000000000000000002"))
        .await;
    let got = ten_samples(&mut router).await;
    let want: Vec<String> = (0..10).map(|i| format!("sample-{i}")).collect();
    assert_eq!(got, want, "10 samples, in order, no duplicate");
    assert_eq!(device_info(&router).await, "hypha-nostd host");
    let mut put = vec!["put", "ctl/exit", "6", "--wait-ms", "10000"];
    put.extend(router.client());
    let (c, _, err) = run_cli(CLI, &put).await.unwrap();
    assert_eq!(c, 0, "{err}");
    let (code, stats) = tokio::task::spawn_blocking(move || dev.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 6);
    assert!(
        stats.contains("crc_errors: 0, cobs_errors: 0, overflows: 0")
            && stats.ends_with("connects=1"),
        "{stats}"
    );
    assert!(
        !router
            .drain()
            .iter()
            .any(|l| l.contains("serial framing error"))
    );
}
