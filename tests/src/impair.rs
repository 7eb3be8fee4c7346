//! The engine of `hypha-impair`, a userspace network impairment bridge (the kernel of the test
//! machines has no `netem`), and [`ImpairedLink`], which runs it between two hosts of a
//! [`Lab`](crate::netns::Lab).
//!
//! The program itself (`src/bin/hypha-impair.rs`, documented there) opens two TUN devices and
//! moves each into a namespace; this module holds what does not need a device, so that it is
//! tested without root: per-direction settings ([`Direction`]: delay, jitter, loss, cut), the
//! delay queue, the counters, a seeded random generator ([`Rng`]), the control commands
//! ([`Command::parse`]) and the forwarding threads ([`start`]), which take any `Read` (one packet
//! per read, as a TUN device gives them) and any `Write`.
//!
//! A packet read from side A is either dropped, in this order, because the direction is cut,
//! lost at random, or its queue is full; or queued until `now + delay ± jitter` and written to
//! side B then, unless the direction was cut meanwhile (a cut drops what is in flight too: once
//! `cut` is answered, nothing more is delivered). Each drop is counted by cause.

use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A direction of the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From side A to side B.
    AToB,
    /// From side B to side A.
    BToA,
}

impl Dir {
    /// Both directions.
    pub const BOTH: [Dir; 2] = [Dir::AToB, Dir::BToA];

    fn index(self) -> usize {
        match self {
            Dir::AToB => 0,
            Dir::BToA => 1,
        }
    }

    /// The key of this direction in the JSON the bridge prints (`a_to_b`, `b_to_a`).
    pub fn key(self) -> &'static str {
        match self {
            Dir::AToB => "a_to_b",
            Dir::BToA => "b_to_a",
        }
    }

    /// Parses a direction word of a command (`a2b`, `b2a`, `both`, …); `None` if it is not one.
    pub fn parse_set(word: &str) -> Option<Vec<Dir>> {
        match word.to_ascii_lowercase().as_str() {
            "a2b" | "ab" | "a->b" | "a_to_b" => Some(vec![Dir::AToB]),
            "b2a" | "ba" | "b->a" | "b_to_a" => Some(vec![Dir::BToA]),
            "both" | "all" => Some(Dir::BOTH.to_vec()),
            _ => None,
        }
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same losses and jitter, on
/// every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0); the bias is below 2^-40 for the `n` used here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// One change of a direction's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Fixed one-way delay.
    Delay(Duration),
    /// Jitter: each packet's delay is the fixed delay plus a uniform offset in `-j..=+j`
    /// (never below zero).
    Jitter(Duration),
    /// Random loss, in percent (0–100).
    Loss(f64),
    /// Drop everything (`true`) or nothing (`false`) for the cut.
    Cut(bool),
}

/// The longest delay or jitter accepted (one hour).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Parses a duration: a non-negative number followed by `us`, `ms` (the default) or `s`
/// (`50ms`, `50`, `1.5s`, `200us`), at most [`MAX_DELAY`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t.as_str(), 1e-3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (examples: 50ms, 1.5s, 200us)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs < 0.0 || secs > MAX_DELAY.as_secs_f64() {
        return Err(format!("duration out of range (0 to 1 h): {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a loss in percent (`30`, `30%`, `0.5`), 0 to 100.
pub fn parse_loss(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t);
    let v: f64 = t
        .trim()
        .parse()
        .map_err(|_| format!("not a percentage: {s:?}"))?;
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(format!("loss out of range (0 to 100 %): {s:?}"));
    }
    Ok(v)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        _ => Err(format!("not on/off: {s:?}")),
    }
}

/// Parses `key=value` settings (`delay=50ms jitter=5ms loss=1 cut=off`, separated by spaces or
/// commas), as `--a2b`/`--b2a` and the `set` command take them.
pub fn parse_changes<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    for w in words
        .into_iter()
        .flat_map(|w| w.split(','))
        .filter(|w| !w.is_empty())
    {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {w:?}"))?;
        out.push(match k.trim().to_ascii_lowercase().as_str() {
            "delay" => Change::Delay(parse_duration(v)?),
            "jitter" => Change::Jitter(parse_duration(v)?),
            "loss" => Change::Loss(parse_loss(v)?),
            "cut" => Change::Cut(parse_on_off(v)?),
            other => {
                return Err(format!(
                    "unknown setting {other:?} (delay, jitter, loss, cut)"
                ));
            }
        });
    }
    Ok(out)
}

/// A control command, one per line on the bridge's stdin or control socket.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `stats`: settings and counters of both directions.
    Stats,
    /// `quit`: print the final counters and exit.
    Quit,
    /// `help`: the list of commands.
    Help,
    /// `cut`, `uncut`, `delay`, `jitter`, `loss`, `set`: new settings for some directions.
    Set(Vec<Dir>, Vec<Change>),
}

/// The commands, as `help` answers.
pub const HELP: &str = "stats | quit | help | cut [DIR] | uncut [DIR] | delay DUR [DIR] | \
jitter DUR [DIR] | loss PCT [DIR] | set [DIR] key=value... (delay, jitter, loss, cut); \
DIR: a2b, b2a or both (default both); DUR: 50ms, 1.5s, 200us";

impl Command {
    /// Parses one line; an error says what is wrong (never a panic, whatever the line).
    pub fn parse(line: &str) -> Result<Command, String> {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            return Err("empty command".into());
        }
        let verb = words.remove(0).to_ascii_lowercase();
        // An optional direction anywhere after the verb.
        let mut dirs = None;
        words.retain(|w| match Dir::parse_set(w) {
            Some(d) if dirs.is_none() => {
                dirs = Some(d);
                false
            }
            _ => true,
        });
        let dirs = dirs.unwrap_or_else(|| Dir::BOTH.to_vec());
        let one = |words: &[&str]| -> Result<String, String> {
            match words {
                [w] => Ok((*w).to_string()),
                _ => Err(format!("{verb} takes one value and an optional direction")),
            }
        };
        let none = |words: &[&str]| -> Result<(), String> {
            if words.is_empty() {
                Ok(())
            } else {
                Err(format!("unexpected {words:?} after {verb}"))
            }
        };
        match verb.as_str() {
            "stats" | "status" => none(&words).map(|()| Command::Stats),
            "quit" | "exit" => none(&words).map(|()| Command::Quit),
            "help" => Ok(Command::Help),
            "cut" => none(&words).map(|()| Command::Set(dirs, vec![Change::Cut(true)])),
            "uncut" | "restore" => {
                none(&words).map(|()| Command::Set(dirs, vec![Change::Cut(false)]))
            }
            "delay" => Ok(Command::Set(
                dirs,
                vec![Change::Delay(parse_duration(&one(&words)?)?)],
            )),
            "jitter" => Ok(Command::Set(
                dirs,
                vec![Change::Jitter(parse_duration(&one(&words)?)?)],
            )),
            "loss" => Ok(Command::Set(
                dirs,
                vec![Change::Loss(parse_loss(&one(&words)?)?)],
            )),
            "set" => {
                let changes = parse_changes(words.iter().copied())?;
                if changes.is_empty() {
                    return Err("set needs key=value settings".into());
                }
                Ok(Command::Set(dirs, changes))
            }
            _ => Err(format!("unknown command {verb:?}; {HELP}")),
        }
    }
}

/// Counters of one direction. `read` = `forwarded` + every `dropped_*` + `queued` (+ packets
/// being written at that instant).
#[derive(Default, Debug)]
pub struct Counters {
    /// Packets read from the source side.
    pub read: AtomicU64,
    /// Packets written to the destination side.
    pub forwarded: AtomicU64,
    /// Bytes of the packets forwarded.
    pub forwarded_bytes: AtomicU64,
    /// Packets dropped at random (`loss`).
    pub dropped_loss: AtomicU64,
    /// Packets dropped because the direction was cut (on arrival or while queued).
    pub dropped_cut: AtomicU64,
    /// Packets dropped because the delay queue was full.
    pub dropped_overflow: AtomicU64,
    /// Packets the destination refused (a write error), dropped.
    pub write_errors: AtomicU64,
    /// Read errors on the source side (the read is retried).
    pub read_errors: AtomicU64,
}

#[derive(Debug)]
struct Pending {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Reversed: BinaryHeap is a max-heap and the earliest release must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default, Debug)]
struct Queue {
    heap: BinaryHeap<Pending>,
    seq: u64,
    last_release: Option<Instant>,
}

/// Why a packet was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The direction is cut.
    Cut,
    /// Random loss.
    Loss,
    /// The delay queue is full.
    Overflow,
}

/// One direction: its settings (changed at run time), its delay queue and its counters.
#[derive(Debug)]
pub struct Direction {
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    loss_ppm: AtomicU32,
    cut: AtomicBool,
    reorder: bool,
    capacity: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The counters.
    pub counters: Counters,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Direction {
    /// A direction that forwards at once; `capacity`: packets its delay queue holds at most;
    /// `reorder`: whether jitter may reorder packets (otherwise a packet never leaves before the
    /// one read before it, like a single link).
    pub fn new(capacity: usize, reorder: bool) -> Direction {
        Direction {
            delay_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            loss_ppm: AtomicU32::new(0),
            cut: AtomicBool::new(false),
            reorder,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a change.
    pub fn apply(&self, c: Change) {
        match c {
            Change::Delay(d) => self.delay_us.store(micros(d), Ordering::Relaxed),
            Change::Jitter(d) => self.jitter_us.store(micros(d), Ordering::Relaxed),
            Change::Loss(p) => {
                let ppm = (p.clamp(0.0, 100.0) * 10_000.0).round() as u32;
                self.loss_ppm.store(ppm, Ordering::Relaxed)
            }
            Change::Cut(on) => {
                self.cut.store(on, Ordering::SeqCst);
                // Wake the writer so that it drops what is queued now rather than at release.
                let _q = self.lock();
                self.wake.notify_all();
            }
        }
    }

    /// Whether the direction is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Packets waiting in the delay queue.
    pub fn queued(&self) -> usize {
        self.lock().heap.len()
    }

    /// Takes a packet read at `now`: queues it (returning its release time) or drops it, counted.
    /// `loss` and `jitter` are the generators for those two draws (separate, so that the loss
    /// pattern does not depend on the jitter setting).
    pub fn offer(
        &self,
        data: Vec<u8>,
        now: Instant,
        loss: &mut Rng,
        jitter: &mut Rng,
    ) -> Result<Instant, Dropped> {
        let c = &self.counters;
        c.read.fetch_add(1, Ordering::Relaxed);
        if self.is_cut() {
            c.dropped_cut.fetch_add(1, Ordering::Relaxed);
            return Err(Dropped::Cut);
        }
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        if ppm > 0 && loss.below(1_000_000) < u64::from(ppm) {
            c.dropped_loss.fetch_add(1, Ordering::Relaxed);
            return Err(Dropped::Loss);
        }
        let mut delay = self.delay_us.load(Ordering::Relaxed);
        let j = self.jitter_us.load(Ordering::Relaxed);
        if j > 0 {
            let offset = jitter.below(2 * j + 1);
            delay = (delay + offset).saturating_sub(j);
        }
        let mut at = now + Duration::from_micros(delay);
        let mut q = self.lock();
        if q.heap.len() >= self.capacity {
            c.dropped_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Dropped::Overflow);
        }
        if !self.reorder {
            if let Some(last) = q.last_release {
                at = at.max(last);
            }
            q.last_release = Some(at);
        }
        let seq = q.seq;
        q.seq += 1;
        let was_first = q.heap.peek().is_none_or(|p| at < p.at);
        q.heap.push(Pending { at, seq, data });
        if was_first {
            self.wake.notify_all();
        }
        Ok(at)
    }

    /// Blocks until a queued packet is due and returns it; packets due while the direction is
    /// cut are dropped and counted. `None` when `stop` is set (checked at least every 100 ms).
    pub fn next_due(&self, stop: &AtomicBool) -> Option<Vec<u8>> {
        let mut q = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if self.is_cut() && !q.heap.is_empty() {
                let n = q.heap.len() as u64;
                q.heap.clear();
                q.last_release = None;
                self.counters.dropped_cut.fetch_add(n, Ordering::Relaxed);
            }
            let now = Instant::now();
            let wait = match q.heap.peek() {
                Some(p) if p.at <= now => {
                    if let Some(p) = q.heap.pop() {
                        return Some(p.data);
                    }
                    continue;
                }
                Some(p) => (p.at - now).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            q = self
                .wake
                .wait_timeout(q, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Settings and counters, as the bridge prints them.
    pub fn json(&self) -> serde_json::Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let dropped = get(&c.dropped_loss)
            + get(&c.dropped_cut)
            + get(&c.dropped_overflow)
            + get(&c.write_errors);
        serde_json::json!({
            "delay_us": self.delay_us.load(Ordering::Relaxed),
            "jitter_us": self.jitter_us.load(Ordering::Relaxed),
            "loss_pct": f64::from(self.loss_ppm.load(Ordering::Relaxed)) / 10_000.0,
            "cut": self.is_cut(),
            "read": get(&c.read),
            "forwarded": get(&c.forwarded),
            "forwarded_bytes": get(&c.forwarded_bytes),
            "dropped": dropped,
            "dropped_loss": get(&c.dropped_loss),
            "dropped_cut": get(&c.dropped_cut),
            "dropped_overflow": get(&c.dropped_overflow),
            "write_errors": get(&c.write_errors),
            "read_errors": get(&c.read_errors),
            "queued": self.queued(),
        })
    }
}

/// Both directions of a bridge.
#[derive(Debug)]
pub struct Link {
    dirs: [Direction; 2],
    started: Instant,
    /// Set to stop the forwarding threads (their next wake-up).
    pub stop: AtomicBool,
}

impl Link {
    /// A link whose directions queue `capacity` packets at most each.
    pub fn new(capacity: usize, reorder: bool) -> Link {
        Link {
            dirs: [
                Direction::new(capacity, reorder),
                Direction::new(capacity, reorder),
            ],
            started: Instant::now(),
            stop: AtomicBool::new(false),
        }
    }

    /// One direction.
    pub fn dir(&self, d: Dir) -> &Direction {
        &self.dirs[d.index()]
    }

    /// Applies `changes` to `dirs`.
    pub fn apply(&self, dirs: &[Dir], changes: &[Change]) {
        for d in dirs {
            for c in changes {
                self.dir(*d).apply(*c);
            }
        }
    }

    /// `{"a_to_b": {...}, "b_to_a": {...}, "uptime_ms": …}` merged into `{"event": event}`.
    pub fn json(&self, event: &str) -> serde_json::Value {
        serde_json::json!({
            "event": event,
            "uptime_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "a_to_b": self.dir(Dir::AToB).json(),
            "b_to_a": self.dir(Dir::BToA).json(),
        })
    }

    /// Runs one command line; the reply is a JSON object `{"event":"reply","ok":…}` with the
    /// settings and counters, or the error. The flag is true for `quit`.
    pub fn handle(&self, line: &str) -> (serde_json::Value, bool) {
        match Command::parse(line) {
            Err(e) => (
                serde_json::json!({"event": "reply", "ok": false, "error": e}),
                false,
            ),
            Ok(cmd) => {
                let quit = cmd == Command::Quit;
                if let Command::Set(dirs, changes) = &cmd {
                    self.apply(dirs, changes);
                }
                let mut v = self.json("reply");
                v["ok"] = true.into();
                v["cmd"] = line.trim().into();
                if cmd == Command::Help {
                    v["help"] = HELP.into();
                }
                (v, quit)
            }
        }
    }
}

/// Starts the two threads of direction `d`: one reads packets from `source` (one per `read`)
/// into the delay queue, the other writes them to `sink` when due. `seed` makes the loss and the
/// jitter reproducible (each direction derives its own streams from it). The reader ends at
/// `Ok(0)` (end of input) or when `link.stop` is set after a packet; the writer when
/// `link.stop` is set.
pub fn start<R, W>(
    link: Arc<Link>,
    d: Dir,
    mut source: R,
    mut sink: W,
    seed: u64,
) -> std::io::Result<[std::thread::JoinHandle<()>; 2]>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let base = seed ^ ((d.index() as u64 + 1) << 56);
    let mut loss = Rng::new(base ^ 0x6C6F_7373);
    let mut jitter = Rng::new(base ^ 0x6A69_7474);
    let l = Arc::clone(&link);
    let reader = std::thread::Builder::new()
        .name(format!("read-{}", d.key()))
        .spawn(move || {
            let dir = l.dir(d);
            let mut buf = vec![0u8; 65_536];
            let mut errors = 0u32;
            loop {
                match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        errors = 0;
                        let _ =
                            dir.offer(buf[..n].to_vec(), Instant::now(), &mut loss, &mut jitter);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        dir.counters.read_errors.fetch_add(1, Ordering::Relaxed);
                        errors = errors.saturating_add(1);
                        if errors == 1 || errors.is_power_of_two() {
                            eprintln!("hypha-impair: read error ({}): {e}", d.key());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if l.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })?;
    let writer = std::thread::Builder::new()
        .name(format!("write-{}", d.key()))
        .spawn(move || {
            let dir = link.dir(d);
            while let Some(p) = dir.next_due(&link.stop) {
                // One packet per write: a short write is a mangled packet, counted as an error.
                match sink.write(&p) {
                    Ok(n) if n == p.len() => {
                        dir.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                        dir.counters
                            .forwarded_bytes
                            .fetch_add(p.len() as u64, Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => {
                        dir.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })?;
    Ok([reader, writer])
}

// ---------------------------------------------------------------------------------------------
// For tests: the bridge between two hosts of a lab.

/// One side of an [`ImpairedLink`].
#[derive(Clone, Debug)]
pub struct Side {
    /// The namespace.
    pub ns: String,
    /// The TUN interface's name in it.
    pub tun: String,
    /// Its IPv4 address (no prefix length).
    pub ip: String,
}

/// A running `hypha-impair` between two hosts of a [`Lab`](crate::netns::Lab): a point-to-point
/// subnet 10.77.`k`.0/24 (side A .1, side B .2) whose traffic goes through the bridge; other
/// links of the hosts are untouched. Controlled through its Unix socket; killed (its TUN
/// interfaces then vanish) when dropped, also on panic. Drop it before the lab.
pub struct ImpairedLink {
    proc: crate::Proc,
    control: PathBuf,
    /// Side A (the first host).
    pub a: Side,
    /// Side B (the second host).
    pub b: Side,
    /// The ready line the bridge printed.
    pub ready: serde_json::Value,
}

impl ImpairedLink {
    /// Starts `bin` (the `hypha-impair` program: `env!("CARGO_BIN_EXE_hypha-impair")` in an
    /// integration test) between hosts `a` and `b` of `lab`; `k` distinguishes several links of
    /// one lab (subnet and names); `args` are more options (`--delay 50ms`, `--loss 1`,
    /// `--seed 7`, `--a2b "loss=5"`, …). Returns once the interfaces are up.
    pub async fn spawn(
        bin: &str,
        lab: &crate::netns::Lab,
        a: usize,
        b: usize,
        k: u8,
        args: &[&str],
    ) -> anyhow::Result<ImpairedLink> {
        let side = |i: usize, s: &str, host: u8| Side {
            ns: lab.ns(i).to_string(),
            tun: format!("{}i{k}{s}", lab.tag()),
            ip: format!("10.77.{k}.{host}"),
        };
        let (sa, sb) = (side(a, "a", 1), side(b, "b", 2));
        anyhow::ensure!(
            !sa.ns.is_empty() && !sb.ns.is_empty() && sa.ns != sb.ns,
            "hosts {a} and {b} are not two hosts of the lab"
        );
        let control = std::env::temp_dir().join(format!("{}i{k}.sock", lab.tag()));
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--a-name", &sa.tun, "--a-netns", &sa.ns])
            .args(["--a-addr", &format!("{}/24", sa.ip)])
            .args(["--b-name", &sb.tun, "--b-netns", &sb.ns])
            .args(["--b-addr", &format!("{}/24", sb.ip)])
            .arg("--control")
            .arg(&control)
            .args(args);
        let mut proc = crate::Proc::spawn("hypha-impair", cmd)?;
        let ready = proc
            .wait_json(Duration::from_secs(20), |v| v["event"] == "ready")
            .await?;
        Ok(ImpairedLink {
            proc,
            control,
            a: sa,
            b: sb,
            ready,
        })
    }

    /// Sends one control command (see [`HELP`]) and returns the reply (settings and counters);
    /// an error if the bridge refused it or did not answer within 5 s.
    pub async fn command(&self, line: &str) -> anyhow::Result<serde_json::Value> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let io = async {
            let mut s = tokio::net::UnixStream::connect(&self.control).await?;
            s.write_all(format!("{}\n", line.trim()).as_bytes()).await?;
            let mut reply = String::new();
            BufReader::new(s).read_line(&mut reply).await?;
            anyhow::Ok(reply)
        };
        let reply = tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .map_err(|_| anyhow::anyhow!("hypha-impair did not answer {line:?} within 5 s"))??;
        let v: serde_json::Value = serde_json::from_str(&reply)
            .map_err(|e| anyhow::anyhow!("bad reply to {line:?}: {e}: {reply:?}"))?;
        anyhow::ensure!(v["ok"] == true, "hypha-impair refused {line:?}: {v}");
        Ok(v)
    }

    /// The settings and counters of both directions (`v["a_to_b"]["forwarded"]`, …).
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        self.command("stats").await
    }

    /// Asks the bridge to quit and returns its final counters (its `exit` line).
    pub async fn quit(mut self) -> anyhow::Result<serde_json::Value> {
        let _ = self.command("quit").await;
        let v = self
            .proc
            .wait_json(Duration::from_secs(10), |v| v["event"] == "exit")
            .await?;
        let _ = self.proc.exit_code(Duration::from_secs(10)).await;
        Ok(v)
    }

    /// The bridge's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        // The Proc kills the bridge by its PID; its socket file is ours to remove.
        let _ = std::fs::remove_file(&self.control);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A `Read` that yields one queued packet per read; end of input when the sender is gone.
    struct Packets(mpsc::Receiver<Vec<u8>>);
    impl Read for Packets {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.recv() {
                Ok(p) => {
                    let n = p.len().min(buf.len());
                    buf[..n].copy_from_slice(&p[..n]);
                    Ok(n)
                }
                Err(_) => Ok(0),
            }
        }
    }

    /// A `Write` that records each packet with its arrival time.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<Arrival>>>);
    type Arrival = (Instant, Vec<u8>);
    impl Write for Record {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push((Instant::now(), buf.to_vec()));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn bridge(link: &Arc<Link>, seed: u64) -> (mpsc::Sender<Vec<u8>>, Record) {
        let (tx, rx) = mpsc::channel();
        let rec = Record::default();
        start(Arc::clone(link), Dir::AToB, Packets(rx), rec.clone(), seed).unwrap();
        (tx, rec)
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    #[test]
    fn delays_in_order_and_counts() {
        let link = Arc::new(Link::new(100, false));
        link.apply(&[Dir::AToB], &[Change::Delay(Duration::from_millis(30))]);
        let (tx, rec) = bridge(&link, 1);
        let t0 = Instant::now();
        for i in 0..5u8 {
            tx.send(vec![i; 10]).unwrap();
        }
        let c = &link.dir(Dir::AToB).counters;
        wait_for("5 forwarded", || get(&c.forwarded) == 5);
        let got = rec.0.lock().unwrap().clone();
        assert!(got[0].0 - t0 >= Duration::from_millis(30));
        let order: Vec<u8> = got.iter().map(|(_, p)| p[0]).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(get(&c.forwarded_bytes), 50);
        link.stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn loss_is_seeded_and_close_to_the_setting() {
        let run = |seed| {
            let d = Direction::new(10_000, false);
            d.apply(Change::Loss(30.0));
            let (mut l, mut j) = (Rng::new(seed), Rng::new(seed + 1));
            let now = Instant::now();
            (0..10_000)
                .map(|_| d.offer(vec![0], now, &mut l, &mut j).is_ok())
                .collect::<Vec<bool>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same losses");
        assert_ne!(a, run(8));
        let kept = a.iter().filter(|k| **k).count();
        assert!(
            (6_700..7_300).contains(&kept),
            "kept {kept} of 10000 at 30 %"
        );
    }

    #[test]
    fn jitter_stays_in_its_band_and_keeps_order_unless_told() {
        for reorder in [false, true] {
            let d = Direction::new(10_000, reorder);
            d.apply(Change::Delay(Duration::from_millis(20)));
            d.apply(Change::Jitter(Duration::from_millis(10)));
            let (mut l, mut j) = (Rng::new(1), Rng::new(2));
            let now = Instant::now();
            let ats: Vec<Instant> = (0..1000)
                .map(|_| d.offer(vec![0], now, &mut l, &mut j).unwrap())
                .collect();
            let lo = now + Duration::from_millis(10);
            let hi = now + Duration::from_millis(30);
            assert!(ats.iter().all(|a| *a >= lo && *a <= hi));
            let sorted = ats.windows(2).all(|w| w[0] <= w[1]);
            assert_eq!(sorted, !reorder, "reorder={reorder}");
        }
    }

    #[test]
    fn cut_drops_on_arrival_and_in_flight_then_uncut_passes() {
        let link = Arc::new(Link::new(100, false));
        link.apply(&[Dir::AToB], &[Change::Delay(Duration::from_secs(3600))]);
        let (tx, rec) = bridge(&link, 1);
        let d = link.dir(Dir::AToB);
        tx.send(vec![1]).unwrap();
        wait_for("queued", || d.queued() == 1);
        link.handle("cut a2b");
        tx.send(vec![2]).unwrap();
        wait_for("both dropped", || get(&d.counters.dropped_cut) == 2);
        assert_eq!(d.queued(), 0);
        link.handle("uncut");
        link.handle("delay 0");
        tx.send(vec![3]).unwrap();
        wait_for("forwarded", || get(&d.counters.forwarded) == 1);
        assert_eq!(rec.0.lock().unwrap()[0].1, vec![3]);
        link.stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let d = Direction::new(3, false);
        d.apply(Change::Delay(Duration::from_secs(1)));
        let (mut l, mut j) = (Rng::new(1), Rng::new(2));
        let now = Instant::now();
        let r: Vec<_> = (0..5)
            .map(|_| d.offer(vec![0], now, &mut l, &mut j))
            .collect();
        assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 3);
        assert_eq!(r[4], Err(Dropped::Overflow));
        assert_eq!(get(&d.counters.dropped_overflow), 2);
        assert_eq!(get(&d.counters.read), 5);
    }

    #[test]
    fn commands_parse_and_bad_input_is_an_error_not_a_panic() {
        assert_eq!(Command::parse("stats"), Ok(Command::Stats));
        assert_eq!(
            Command::parse("cut b2a"),
            Ok(Command::Set(vec![Dir::BToA], vec![Change::Cut(true)]))
        );
        assert_eq!(
            Command::parse("delay 1.5s a2b"),
            Ok(Command::Set(
                vec![Dir::AToB],
                vec![Change::Delay(Duration::from_millis(1500))]
            ))
        );
        assert_eq!(
            Command::parse("set both delay=20ms,loss=2.5% cut=off"),
            Ok(Command::Set(
                Dir::BOTH.to_vec(),
                vec![
                    Change::Delay(Duration::from_millis(20)),
                    Change::Loss(2.5),
                    Change::Cut(false)
                ]
            ))
        );
        for bad in [
            "",
            "   ",
            "frobnicate",
            "delay",
            "delay -1ms",
            "delay NaN",
            "delay 1e300s",
            "loss 101",
            "loss inf",
            "loss 5 6",
            "set",
            "set delay",
            "set x=1",
            "cut sideways now",
            "stats please",
            "\u{0}\u{ffff}",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad:?} accepted");
            let link = Link::new(10, false);
            let (v, quit) = link.handle(bad);
            assert_eq!(v["ok"], false, "{bad:?}");
            assert!(!quit);
        }
        let link = Link::new(10, false);
        let (v, quit) = link.handle("quit");
        assert!(quit);
        assert_eq!(v["ok"], true);
    }
}
