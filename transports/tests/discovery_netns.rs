//! Multi-host discovery over Linux network namespaces.
//!
//! Each test builds its own topology: a "switch" namespace holding one or two bridges, and one
//! namespace per node, each linked to a bridge by a veth pair, with addresses in `10.77.X.0/24`
//! (and `10.78.X.0/24` for a second subnet), X unique to the test. Nothing is created or changed
//! in the namespace the test runs in, and no traffic leaves these namespaces. Every node is the
//! `discover` example (`transports/examples/discover.rs`) run with `ip netns exec`; the test reads
//! its JSON lines with a deadline.
//!
//! Needs root and `ip netns`; without them every test prints `skipped: <reason>` and returns,
//! except under `CI=true`, where it fails (see `common::require_or_skip`). Once they are there,
//! failing to build the topology fails the test.
//! The guard ([`Net`]) kills the nodes it started and deletes its namespaces when dropped, so
//! cleanup happens even when an assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

mod common;

/// Every wait has this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

/// The tests run one at a time: timings are not skewed by other nodes competing for the CPU.
static SERIAL: Mutex<()> = Mutex::new(());

/// Makes names and subnets unique within this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The `discover` example, built if missing.
fn discover_bin() -> PathBuf {
    // This test runs from <target>/<profile>/deps/; examples live in <target>/<profile>/examples/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let bin = profile_dir.join("examples").join("discover");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "hypha-transports", "--example", "discover"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --example discover failed");
    }
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// One line a node printed.
#[derive(Debug)]
struct Line {
    node: usize,
    text: String,
    at: Instant,
}

/// A string field of a JSON line (our own output: no escapes in ids or endpoints).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The `endpoints` list of a JSON line.
fn endpoints(line: &str) -> Vec<String> {
    let Some(start) = line
        .find("\"endpoints\":[")
        .map(|i| i + "\"endpoints\":[".len())
    else {
        return vec![];
    };
    let Some(len) = line[start..].find(']') else {
        return vec![];
    };
    line[start..start + len]
        .split(',')
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What each node said so far.
#[derive(Debug, Default)]
struct Node {
    id: Option<String>,
    ready_at: Option<Instant>,
    /// Found node id → (endpoints, when).
    found: HashMap<String, (Vec<String>, Instant)>,
    /// Connected node id → when.
    connected: HashMap<String, Instant>,
    exited: bool,
}

/// A topology of namespaces and the nodes running in it. Dropping it cleans everything up.
struct Net {
    prefix: String,
    /// Third octet of this test's subnets.
    octet: u32,
    switch: String,
    namespaces: Vec<String>,
    veths: u32,
    children: Vec<Child>,
    nodes: Vec<Node>,
    lines_tx: mpsc::Sender<Line>,
    lines: mpsc::Receiver<Line>,
    log: Vec<String>,
    bin: PathBuf,
}

impl Net {
    /// A switch namespace with bridge `br0`.
    fn new() -> Result<Net, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (lines_tx, lines) = mpsc::channel();
        let mut net = Net {
            prefix: format!("hyt-{pid}-{n}"),
            octet: (pid.wrapping_mul(7).wrapping_add(n)) % 250 + 1,
            switch: String::new(),
            namespaces: Vec::new(),
            veths: 0,
            children: Vec::new(),
            nodes: Vec::new(),
            lines_tx,
            lines,
            log: Vec::new(),
            bin: PathBuf::new(),
        };
        net.switch = net
            .namespace("sw")
            .map_err(|e| format!("cannot create a namespace: {e}"))?;
        net.bridge("br0")
            .map_err(|e| format!("cannot create a bridge: {e}"))?;
        net.bin = discover_bin();
        Ok(net)
    }

    /// Creates namespace `<prefix>-<name>` with its loopback up.
    fn namespace(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}-{name}", self.prefix);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn bridge(&mut self, br: &str) -> Result<(), String> {
        let sw = self.switch.clone();
        run(&["ip", "-n", &sw, "link", "add", br, "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", br, "up"])
    }

    /// Links namespace `ns` to bridge `br` through interface `ifname` with address `cidr`.
    fn attach(&mut self, ns: &str, ifname: &str, br: &str, cidr: &str) {
        self.veths += 1;
        let port = format!("v{}", self.veths);
        let sw = self.switch.clone();
        // Created in the switch namespace, its peer directly in the node's: the namespace this
        // test runs in never sees either end.
        run(&[
            "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns",
            ns,
        ])
        .unwrap();
        run(&["ip", "-n", &sw, "link", "set", &port, "master", br, "up"]).unwrap();
        run(&["ip", "-n", ns, "addr", "add", cidr, "dev", ifname]).unwrap();
        run(&["ip", "-n", ns, "link", "set", ifname, "up"]).unwrap();
    }

    /// A namespace for a node, on `br0`, at `10.77.<octet>.<host>`.
    fn host(&mut self, name: &str, host: u32) -> String {
        let ns = self.namespace(name).unwrap();
        let cidr = format!("10.77.{}.{host}/24", self.octet);
        self.attach(&ns, "eth0", "br0", &cidr);
        ns
    }

    /// Starts the `discover` example in `ns`; returns its index.
    fn spawn(&mut self, ns: &str) -> usize {
        let idx = self.nodes.len();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&self.bin)
            .args(["--secs", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning discover");
        let out = child.stdout.take().expect("stdout");
        let tx = self.lines_tx.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(out).lines().map_while(Result::ok) {
                if tx
                    .send(Line {
                        node: idx,
                        text,
                        at: Instant::now(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Line {
                node: idx,
                text: "<exit>".into(),
                at: Instant::now(),
            });
        });
        self.children.push(child);
        self.nodes.push(Node::default());
        idx
    }

    fn record(&mut self, line: Line) {
        self.log.push(format!("node {}: {}", line.node, line.text));
        let node = &mut self.nodes[line.node];
        if line.text == "<exit>" {
            node.exited = true;
            return;
        }
        let id = field(&line.text, "id").map(str::to_string);
        match field(&line.text, "event") {
            Some("ready") => {
                node.id = id;
                node.ready_at = Some(line.at);
            }
            Some("found") => {
                if let Some(id) = id {
                    node.found.insert(id, (endpoints(&line.text), line.at));
                }
            }
            Some("connected") => {
                if let Some(id) = id {
                    node.connected.entry(id).or_insert(line.at);
                }
            }
            _ => {}
        }
    }

    /// Reads lines until `cond` holds; panics with everything the nodes said at the deadline.
    fn wait_for(&mut self, what: &str, cond: impl Fn(&[Node]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond(&self.nodes) {
            if let Some(i) = self.nodes.iter().position(|n| n.exited) {
                panic!(
                    "node {i} exited while waiting for {what}:\n{}",
                    self.log.join("\n")
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.record(line),
                Err(_) => panic!(
                    "{what}: not done within {DEADLINE:?}; the nodes said:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    fn id(&self, node: usize) -> String {
        self.nodes[node].id.clone().expect("node is ready")
    }

    /// Waits until every node in `group` found and connected to every other one.
    fn wait_mesh(&mut self, group: &[usize]) {
        self.wait_for("ready lines", |nodes| {
            group.iter().all(|&i| nodes[i].id.is_some())
        });
        let ids: Vec<(usize, String)> = group.iter().map(|&i| (i, self.id(i))).collect();
        let done = |nodes: &[Node], connected: bool| {
            ids.iter().all(|(i, _)| {
                ids.iter().filter(|(j, _)| j != i).all(|(_, other)| {
                    let n = &nodes[*i];
                    n.found.contains_key(other) && (!connected || n.connected.contains_key(other))
                })
            })
        };
        self.wait_for("mutual discovery", |n| done(n, false));
        self.wait_for("links to every found node", |n| done(n, true));
    }

    /// Kills the running nodes (by PID) and forgets what they said.
    fn kill_nodes(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes.clear();
        let (tx, rx) = mpsc::channel();
        self.lines_tx = tx;
        self.lines = rx;
        self.log.clear();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_nodes();
        // Deleting a namespace destroys its interfaces (veths, bridges) with it.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Why these tests cannot run here (not root, no `ip netns`), or `None`.
fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    run(&["ip", "netns", "list"])
        .err()
        .map(|e| format!("`ip netns` unavailable: {e}"))
}

/// The topology, or `None` when the test is skipped (never under `CI=true`).
fn setup() -> Option<Net> {
    if !common::require_or_skip(unavailable()) {
        return None;
    }
    Some(Net::new().unwrap_or_else(|e| panic!("cannot build the test topology: {e}")))
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn two_namespaces_find_each_other_and_connect() {
    let _serial = serial();
    let Some(mut net) = setup() else { return };
    let a = net.host("a", 1);
    let b = net.host("b", 2);
    let (na, nb) = (net.spawn(&a), net.spawn(&b));
    net.wait_mesh(&[na, nb]);
    // Each found the other at its namespace's address (only addresses of these namespaces).
    let subnet = format!("/10.77.{}.", net.octet);
    for (me, other, host) in [(na, nb, 2), (nb, na, 1)] {
        let (eps, _) = &net.nodes[me].found[&net.id(other)];
        assert!(
            eps.iter()
                .any(|e| e.starts_with(&format!("quic/10.77.{}.{host}:", net.octet))),
            "{eps:?}"
        );
        assert!(eps.iter().all(|e| e.contains(&subnet)), "{eps:?}");
    }
}

#[test]
fn three_namespaces_every_node_finds_the_two_others() {
    let _serial = serial();
    let Some(mut net) = setup() else { return };
    let spaces: Vec<String> = (1..=3).map(|i| net.host(&format!("n{i}"), i)).collect();
    let nodes: Vec<usize> = spaces.iter().map(|ns| net.spawn(ns)).collect();
    net.wait_mesh(&nodes);
    for &n in &nodes {
        assert_eq!(
            net.nodes[n].found.len(),
            2,
            "node {n} found exactly the two others"
        );
    }
}

#[test]
fn discovery_time_over_ten_runs() {
    let _serial = serial();
    let Some(mut net) = setup() else { return };
    let a = net.host("a", 1);
    let b = net.host("b", 2);
    let (mut mutual, mut first_link) = (Vec::new(), Vec::new());
    for run in 0..10 {
        let (na, nb) = (net.spawn(&a), net.spawn(&b));
        let started = Instant::now();
        net.wait_mesh(&[na, nb]);
        let (ida, idb) = (net.id(na), net.id(nb));
        let ms = |t: Instant| t.saturating_duration_since(started).as_millis();
        let found = net.nodes[na].found[&idb].1.max(net.nodes[nb].found[&ida].1);
        let linked = net.nodes[na].connected[&idb].min(net.nodes[nb].connected[&ida]);
        eprintln!(
            "run {run}: both found each other {} ms after start (a: {} ms, b: {} ms); \
             first link {} ms",
            ms(found),
            ms(net.nodes[na].found[&idb].1),
            ms(net.nodes[nb].found[&ida].1),
            ms(linked)
        );
        mutual.push(ms(found));
        first_link.push(ms(linked));
        net.kill_nodes();
    }
    let stats = |v: &mut Vec<u128>| {
        v.sort_unstable();
        ((v[4] + v[5]) / 2, v[0], v[9])
    };
    let (median, min, max) = stats(&mut mutual);
    let (l_median, l_min, l_max) = stats(&mut first_link);
    eprintln!(
        "discovery time over 10 runs: median {median} ms, min {min} ms, max {max} ms \
         (from starting both nodes to both having found the other)"
    );
    eprintln!(
        "first link over 10 runs: median {l_median} ms, min {l_min} ms, max {l_max} ms \
         (from starting both nodes to the first QUIC link between them)"
    );
    let times = mutual;
    assert_eq!(times.len(), 10, "every run discovered within {DEADLINE:?}");
}

#[test]
fn a_multi_homed_node_is_found_on_each_of_its_networks() {
    let _serial = serial();
    let Some(mut net) = setup() else { return };
    net.bridge("br1").unwrap();
    let o = net.octet;
    let m = net.namespace("m").unwrap();
    net.attach(&m, "eth0", "br0", &format!("10.77.{o}.1/24"));
    net.attach(&m, "eth1", "br1", &format!("10.78.{o}.1/24"));
    let a = net.host("a", 2); // on br0 only
    let b = net.namespace("b").unwrap(); // on br1 only
    net.attach(&b, "eth0", "br1", &format!("10.78.{o}.2/24"));
    let (nm, na, nb) = (net.spawn(&m), net.spawn(&a), net.spawn(&b));
    net.wait_mesh(&[nm, na]);
    net.wait_mesh(&[nm, nb]);
    let idm = net.id(nm);
    let seen_by_a = &net.nodes[na].found[&idm].0;
    let seen_by_b = &net.nodes[nb].found[&idm].0;
    eprintln!(
        "multi-homed node seen from subnet 1 at {seen_by_a:?}, from subnet 2 at {seen_by_b:?}"
    );
    assert!(
        seen_by_a
            .iter()
            .any(|e| e.contains(&format!("/10.77.{o}.1:"))),
        "{seen_by_a:?}"
    );
    assert!(
        seen_by_b
            .iter()
            .any(|e| e.contains(&format!("/10.78.{o}.1:"))),
        "{seen_by_b:?}"
    );
    // The two single-homed nodes share no network: whatever arrived so far, never each other.
    assert!(!net.nodes[na].found.contains_key(&net.id(nb)));
    assert!(!net.nodes[nb].found.contains_key(&net.id(na)));
}
