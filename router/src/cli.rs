//! The `hypha` command line (`hypha --help`), behind the `cli` feature. The binaries' `main`
//! calls [`main`]; nothing here is a library API, and this is the only place that uses anyhow.

use crate::api::query::{Consolidation, QueryTarget};
use crate::{Config, Sample, SampleKind, Session};
use anyhow::{Context, Result};
use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hypha_core::wire::Mode;
use hypha_transports::Endpoint;
use std::path::PathBuf;
use std::time::Duration;

mod view;

#[derive(Parser)]
#[command(
    name = "hypha",
    version,
    about = "Hypha: a brokerless peer-to-peer pub/sub mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--mode`: the CLI's spelling of [`Mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Routes to its local subscribers and direct neighbours (the default).
    Peer,
    /// Attaches to one router or peer; never forwards.
    Client,
    /// Forwards between sites.
    Router,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Peer => Mode::Peer,
            ModeArg::Client => Mode::Client,
            ModeArg::Router => Mode::Router,
        }
    }
}

#[derive(Args, Clone, Default)]
struct Common {
    /// Endpoint to listen on (repeatable), e.g. quic/0.0.0.0:7447. Default: quic/0.0.0.0:0
    /// (`hypha router`: quic/[::]:7447).
    #[arg(long = "listen", value_name = "EP")]
    listen: Vec<String>,
    /// Endpoint to connect to (repeatable), e.g. tcp/192.0.2.1:7447.
    #[arg(long = "connect", value_name = "EP")]
    connect: Vec<String>,
    /// Do not announce or discover peers with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node mode (default: peer, or the configuration file's).
    #[arg(long, value_enum, value_name = "MODE")]
    mode: Option<ModeArg>,
}

/// `--backend` of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// In memory: lost when the process exits.
    Memory,
    /// On disk (a segment log, `log/`), under --data-dir: the default.
    Log,
    /// On disk (redb, one file `store.redb`), under --data-dir.
    Redb,
    /// On disk (sled), under --data-dir.
    Sled,
    /// On disk (fjall), under --data-dir; only in a build with `--features fjall`.
    Fjall,
}

#[derive(Args, Clone)]
struct StorageOpts {
    /// Where a storage keeps its samples.
    #[arg(long, value_enum, default_value_t = BackendArg::Log)]
    backend: BackendArg,
    /// Where the storage keeps its files (default: hypha-data/<keyexpr>).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Drop history older than this (e.g. 10m, 24h). Default: 24h.
    #[arg(long, value_name = "DUR")]
    retain_age: Option<String>,
    /// Keep at most this many samples of history.
    #[arg(long, value_name = "N")]
    retain_count: Option<usize>,
    /// Keep at most about this many payload bytes of history (the oldest go first).
    #[arg(long, value_name = "BYTES")]
    retain_bytes: Option<u64>,
    /// Drop history once every durable consumer of this storage has acknowledged it (a
    /// work queue).
    #[arg(long)]
    retain_until_acked: bool,
    /// Flush interval in milliseconds (the durability window: the log and redb sync once this
    /// long has passed since the last sync, sled writes its log this often).
    #[arg(long, default_value_t = 100)]
    flush_ms: u64,
    /// Samples the storage's ingest queue holds, at most (memory and what a crash can lose
    /// beyond the flush window).
    #[arg(long, value_name = "N", default_value_t = crate::storage::DEFAULT_QUEUE)]
    queue: usize,
    /// How long a full ingest queue holds the delivering link (back-pressure) before it drops
    /// samples, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = crate::storage::DEFAULT_BLOCK_MS)]
    block_ms: u64,
}

fn storage_config(keyexpr: &str, o: &StorageOpts) -> Result<crate::storage::StorageConfig> {
    let key = hypha_core::keyexpr::OwnedKeyExpr::autocanonize(keyexpr.to_string())
        .map_err(|e| anyhow::anyhow!("invalid key expression {keyexpr:?}: {e}"))?;
    let mut c = crate::storage::StorageConfig::new(key);
    use crate::storage::BackendKind;
    let dir = match (&o.data_dir, &c.backend) {
        (Some(d), _) => d.clone(),
        (
            None,
            BackendKind::Log(d)
            | BackendKind::Redb(d)
            | BackendKind::Sled(d)
            | BackendKind::Fjall(d),
        ) => d.clone(),
        (None, BackendKind::Memory) => std::path::PathBuf::from("hypha-data"),
    };
    c.backend = match o.backend {
        BackendArg::Memory => BackendKind::Memory,
        BackendArg::Log => BackendKind::Log(dir),
        BackendArg::Redb => BackendKind::Redb(dir),
        BackendArg::Sled => BackendKind::Sled(dir),
        BackendArg::Fjall => BackendKind::Fjall(dir),
    };
    if let Some(a) = &o.retain_age {
        c.retain_age = Some(crate::storage::timeexpr::parse_duration(a)?);
    }
    c.retain_count = o.retain_count;
    c.retain_bytes = o.retain_bytes;
    c.retain_until_acked = o.retain_until_acked;
    c.flush_ms = o.flush_ms;
    if o.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    c.queue = o.queue;
    c.block_ms = o.block_ms;
    Ok(c)
}

/// `sub --durable`: a durable subscriber (its position kept by a storage holding KEYEXPR).
#[derive(Args, Clone)]
struct DurableOpts {
    /// Subscribe as the durable consumer NAME: resume after the last sample acknowledged
    /// under that name (each is acknowledged once printed); processes sharing a NAME share
    /// the samples (a work-queue group).
    #[arg(long, value_name = "NAME")]
    durable: Option<String>,
    /// With --durable: a sample not acknowledged within this long is delivered again.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        requires = "durable"
    )]
    ack_wait_ms: u64,
    /// With --durable: deliveries of one sample at most (0: no bound).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "durable")]
    max_deliver: u32,
    /// With --durable: where samples that reached --max-deliver are published.
    #[arg(long, value_name = "KEY", requires = "durable")]
    dead_letter: Option<String>,
    /// With --durable: where a new consumer starts: `all` (default), `new`, or a time
    /// (`now(-10m)`, RFC 3339).
    #[arg(long, value_name = "WHEN", requires = "durable")]
    start: Option<String>,
}

/// `put --ack`: the CLI's spelling of [`crate::Ack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AckArg {
    /// The storages have committed the sample.
    Received,
    /// ... and synced it to disk.
    Durable,
}

impl From<AckArg> for crate::Ack {
    fn from(a: AckArg) -> Self {
        match a {
            AckArg::Received => crate::Ack::Received,
            AckArg::Durable => crate::Ack::Durable,
        }
    }
}

/// `get --target`: the CLI's spelling of [`QueryTarget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    /// The nearest matching queryables (complete ones preferred).
    Best,
    /// Every matching queryable.
    All,
    /// Every complete matching queryable.
    Complete,
}

impl From<TargetArg> for QueryTarget {
    fn from(t: TargetArg) -> Self {
        match t {
            TargetArg::Best => QueryTarget::BestMatching,
            TargetArg::All => QueryTarget::All,
            TargetArg::Complete => QueryTarget::AllComplete,
        }
    }
}

/// `get --consolidation`: the CLI's spelling of [`Consolidation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ConsolidationArg {
    /// Latest per key, unless a `_time` window is asked for.
    Auto,
    /// Every reply.
    None,
    /// Drop replies older than one already printed for the same key.
    Monotonic,
    /// Only the newest reply per key, printed at the end.
    Latest,
}

impl From<ConsolidationArg> for Consolidation {
    fn from(c: ConsolidationArg) -> Self {
        match c {
            ConsolidationArg::Auto => Consolidation::Auto,
            ConsolidationArg::None => Consolidation::None,
            ConsolidationArg::Monotonic => Consolidation::Monotonic,
            ConsolidationArg::Latest => Consolidation::Latest,
        }
    }
}

/// `hypha router`: a node's options plus the backbone's.
#[derive(Args, Clone)]
struct RouterCmd {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    router: RouterArgs,
}

/// The backbone between sites (`[router]` in the configuration file).
#[derive(Args, Clone, Default)]
struct RouterArgs {
    /// This router's site (routers of one site elect one designated router to face its
    /// peers).
    #[arg(long, value_name = "NAME")]
    site: Option<String>,
    /// A router of another site to keep a backbone link to (repeatable), e.g.
    /// quic/203.0.113.5:7447.
    #[arg(long = "backbone", value_name = "EP")]
    backbone: Vec<String>,
    /// The cost of the --backbone links (default: the far end's, or 100); routes take the
    /// cheapest sum.
    #[arg(long, value_name = "N")]
    cost: Option<u32>,
    /// Where clients of other routers reach this one when they fail over to it (repeatable;
    /// behind NAT: the public endpoint, e.g. quic/198.51.100.7:7447). Default: the listeners,
    /// an unspecified host replaced by the interface addresses.
    #[arg(long = "advertise", value_name = "EP")]
    advertise: Vec<String>,
}

/// What `peer` and `router` do besides running the node.
#[derive(Args, Clone)]
struct NodeArgs {
    /// Subscribe to KEYEXPR and print each sample as a JSON line (repeatable).
    #[arg(long = "sub", value_name = "KEYEXPR")]
    sub: Vec<String>,
    /// Publish on KEY every --interval-ms (value: --value, `{i}` = counter).
    #[arg(long = "pub", value_name = "KEY")]
    publish: Option<String>,
    /// The value published with --pub.
    #[arg(long, default_value = "{i}")]
    value: String,
    /// Interval of --pub.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Hold a liveliness token on KEY (repeatable).
    #[arg(long = "token", value_name = "KEY")]
    token: Vec<String>,
    /// Print liveliness changes of tokens matching KEYEXPR as JSON lines (repeatable).
    #[arg(long = "liveliness", value_name = "KEYEXPR")]
    liveliness: Vec<String>,
    /// Host a storage on KEYEXPR in this node (repeatable; options as for `storage`).
    #[arg(long = "storage", value_name = "KEYEXPR")]
    storage: Vec<String>,
    #[command(flatten)]
    storage_opts: StorageOpts,
    /// Serve the HTTP gateway and the live page on ADDR (e.g. 127.0.0.1:8000; port 0 picks
    /// one, printed as "http" in the ready line). Overrides the configuration's http.listen.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    common: Common,
}

/// `acl` subcommands.
#[derive(Subcommand)]
enum AclCmd {
    /// Print the decision for one operation of one principal on one key, and the rule that
    /// made it (no node is started).
    Check {
        /// The node configuration holding the [acl] rules.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The principal (as a certificate would name it, or `anonymous`).
        #[arg(long = "as", value_name = "PRINCIPAL")]
        principal: String,
        /// The operation: put, delete, sub, query, queryable, reply, token, token_sub, admin.
        #[arg(long, value_name = "OP")]
        op: String,
        /// The key expression.
        #[arg(long, value_name = "KEYEXPR")]
        key: String,
        /// Print a JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a pre-shared token for PRINCIPAL: prints the token (give it to that node as
    /// `[auth] token`) and the `[[acl.token]]` entry holding its hash (for the listeners).
    Token {
        /// Who will present it.
        #[arg(long = "principal", value_name = "PRINCIPAL")]
        principal: String,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node until interrupted (optionally publishing, subscribing and holding tokens,
    /// printing what it sees as JSON lines).
    Peer(NodeArgs),
    /// Run a node in router mode until interrupted (options as for `peer`, plus the
    /// backbone: --site, --backbone, --cost).
    ///
    /// Listens on quic/[::]:7447 (quic/0.0.0.0:7447 where IPv6 cannot be bound) unless --listen
    /// or the configuration file says otherwise. --mode, if given, must be router.
    Router(RouterCmd),
    /// Publish VALUE on KEY, once or repeatedly.
    Pub {
        /// The key (concrete, no wildcards).
        key: String,
        /// The value (UTF-8 text). `{i}` is replaced by the sample number.
        value: String,
        /// How many samples.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Pause between samples.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Wait this long for a matching subscriber before the first sample.
        #[arg(long, default_value_t = 2000)]
        wait_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Publish VALUE on KEY once.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Wait this long for a matching subscriber first.
        #[arg(long, default_value_t = 2000)]
        wait_ms: u64,
        /// Return only once the storages holding KEY have the sample (`received`) or have
        /// synced it to disk (`durable`); an error if none holds KEY or none acknowledged
        /// within 5 s.
        #[arg(long, value_enum, value_name = "LEVEL")]
        ack: Option<AckArg>,
        #[command(flatten)]
        common: Common,
    },
    /// Publish a deletion of KEY.
    Delete {
        /// The key.
        key: String,
        /// Wait this long for a matching subscriber first.
        #[arg(long, default_value_t = 2000)]
        wait_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Print every sample matching KEYEXPR, one line each.
    Sub {
        /// The key expression, e.g. fleet/*/speed or fleet/**.
        keyexpr: String,
        /// One JSON object per line: kind, key, payload, timestamp (and encoding: base64 when
        /// the payload is not UTF-8).
        #[arg(long)]
        json: bool,
        /// Exit after this many samples.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        durable: DurableOpts,
        #[command(flatten)]
        common: Common,
    },
    /// List the nodes announced on the LAN (mDNS).
    Scout {
        /// How long to listen.
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Accepted for uniformity with the other commands; scouting only browses mDNS.
        #[command(flatten)]
        common: Common,
    },
    /// Query SELECTOR (`KEYEXPR[?PARAMS]`) and print the replies; exits non-zero if none came.
    Get {
        /// e.g. `fleet/**` or `fleet/**?_time=[now(-10m)..];limit=100`.
        selector: String,
        /// One JSON object per reply (like `sub --json`; errors have `"kind":"error"`).
        #[arg(long)]
        json: bool,
        /// Which queryables are asked.
        #[arg(long, value_enum, default_value_t = TargetArg::Best)]
        target: TargetArg,
        /// How replies are consolidated.
        #[arg(long, value_enum, default_value_t = ConsolidationArg::Auto)]
        consolidation: ConsolidationArg,
        /// How long to wait for replies.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Wait this long for a matching queryable to be known first.
        #[arg(long, default_value_t = 2000)]
        wait_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Answer every query on KEYEXPR with VALUE (on the query's key, if concrete).
    Queryable {
        /// The key expression answered.
        keyexpr: String,
        /// The value replied.
        value: String,
        #[command(flatten)]
        common: Common,
    },
    /// Run a storage on KEYEXPR: latest values and time-indexed history, queryable with get.
    Storage {
        /// The key expression stored.
        keyexpr: String,
        #[command(flatten)]
        opts: StorageOpts,
        #[command(flatten)]
        common: Common,
    },
    /// Access control: check a decision against a configuration's rules.
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// Print this node's id, endpoints and neighbours: a table (--json: one JSON object).
    Info {
        /// Wait this long for neighbours before printing.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
        /// One JSON object (id, mode, listening, links with their counters, node counters).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// A refreshing view of a node's links and rates (msg/s, bytes/s each way, drops), read
    /// from its admin space: the node at the other end of --connect unless --node says.
    ///
    /// Runs as a client (unless --mode says otherwise) and redraws every --interval-ms until
    /// interrupted; --once prints one frame (rates over one interval) without escape codes.
    Top {
        /// The node to show: its id, or `*` for every node that answers (default: the node
        /// this one links to first).
        #[arg(long, value_name = "ID")]
        node: Option<String>,
        /// Time between two readings.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print one frame and exit (two readings --interval-ms apart), plain text.
        #[arg(long)]
        once: bool,
        /// Wait this long for the first link.
        #[arg(long, default_value_t = 3000)]
        wait_ms: u64,
        #[command(flatten)]
        common: Common,
    },
}

fn config(c: &Common) -> Result<Config> {
    let mut cfg = match &c.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if !c.listen.is_empty() {
        cfg.listen = c
            .listen
            .iter()
            .map(|s| s.parse().with_context(|| format!("--listen {s}")))
            .collect::<Result<_>>()?;
    }
    for s in &c.connect {
        cfg.connect
            .push(s.parse().with_context(|| format!("--connect {s}"))?);
    }
    if c.no_mdns {
        cfg.mdns = false;
    }
    if let Some(m) = c.mode {
        cfg.mode = m.into();
        // A client only dials out: no default listener (an explicit --listen still counts).
        if cfg.mode == hypha_core::wire::Mode::Client
            && c.listen.is_empty()
            && cfg.listen == vec![Config::default_listen()]
        {
            cfg.listen.clear();
        }
    }
    Ok(cfg)
}

async fn open(c: &Common) -> Result<Session> {
    Ok(crate::open(config(c)?).await?)
}

/// Where `hypha router` listens by default, and its fallback on hosts without IPv6.
const ROUTER_LISTEN: &str = "quic/[::]:7447";
const ROUTER_LISTEN_V4: &str = "quic/0.0.0.0:7447";

/// The configuration of `hypha router`: `config` in router mode, listening on
/// [`ROUTER_LISTEN`] unless `--listen` or the configuration file chose. The flag tells whether
/// that default was applied.
fn router_config(c: &Common, r: &RouterArgs) -> Result<(Config, bool)> {
    if let Some(m) = c.mode.filter(|m| *m != ModeArg::Router) {
        anyhow::bail!(
            "`hypha router` runs in router mode; --mode {} is for `hypha peer`",
            Mode::from(m)
        );
    }
    let mut cfg = config(c)?;
    if cfg.mode != Mode::Router && cfg.lease_ms == 3_000 {
        // The peer default, not a choice: a router's lease is shorter (silent cuts).
        cfg.lease_ms = crate::config::ROUTER_LEASE_MS;
    }
    cfg.mode = Mode::Router;
    if let Some(site) = &r.site {
        cfg.router.site = site.clone();
    }
    for b in &r.backbone {
        cfg.router.backbone.push(endpoint(b)?);
    }
    if r.cost.is_some() {
        cfg.router.cost = r.cost;
    }
    if !r.advertise.is_empty() {
        cfg.router.advertise = r
            .advertise
            .iter()
            .map(|a| endpoint(a))
            .collect::<Result<_>>()?;
        crate::config::check_advertise(&cfg.router.advertise)?;
    }
    let default_listen = c.listen.is_empty() && cfg.listen == vec![Config::default_listen()];
    if default_listen {
        cfg.listen = vec![endpoint(ROUTER_LISTEN)?];
    }
    Ok((cfg, default_listen))
}

fn endpoint(s: &str) -> Result<Endpoint> {
    s.parse().with_context(|| format!("endpoint {s}"))
}

/// Opens the router's node; if the default IPv6 listener cannot start for any reason other than
/// its port being taken, listens on [`ROUTER_LISTEN_V4`] instead.
async fn open_router(mut cfg: Config, default_listen: bool) -> Result<Session> {
    match crate::open(cfg.clone()).await {
        Err(crate::OpenError::Listen(e)) if default_listen && !port_taken(&e) => {
            eprintln!("note: {e}; listening on {ROUTER_LISTEN_V4} instead");
            cfg.listen = vec![endpoint(ROUTER_LISTEN_V4)?];
            Ok(crate::open(cfg).await?)
        }
        r => Ok(r?),
    }
}

fn port_taken(e: &hypha_transports::ListenError) -> bool {
    matches!(e, hypha_transports::ListenError::Bind { source, .. }
        if source.kind() == std::io::ErrorKind::AddrInUse)
}

fn sample_json(s: &Sample) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert(
        "kind".into(),
        if s.kind == SampleKind::Put {
            "put"
        } else {
            "delete"
        }
        .into(),
    );
    o.insert("key".into(), s.key.to_string().into());
    match s.payload_str() {
        Some(t) => {
            o.insert("payload".into(), t.into());
        }
        None => {
            o.insert(
                "payload".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&s.payload)
                    .into(),
            );
            o.insert("encoding".into(), "base64".into());
        }
    }
    o.insert(
        "timestamp".into(),
        s.timestamp
            .map_or(serde_json::Value::Null, |t| t.to_string().into()),
    );
    serde_json::Value::Object(o)
}

fn sample_line(s: &Sample) -> String {
    let kind = if s.kind == SampleKind::Put {
        "put"
    } else {
        "delete"
    };
    let payload = match s.payload_str() {
        Some(t) => t.to_string(),
        None => format!("<{} bytes>", s.payload.len()),
    };
    if s.kind == SampleKind::Put {
        format!("{kind} {} {payload}", s.key)
    } else {
        format!("{kind} {}", s.key)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How `put`, `pub` and `delete` publish.
struct PublishOpts {
    count: u64,
    interval: Duration,
    wait: Duration,
    ack: Option<AckArg>,
}

async fn publish(
    common: &Common,
    key: &str,
    kind: SampleKind,
    value: &str,
    o: PublishOpts,
) -> Result<()> {
    let PublishOpts {
        count,
        interval,
        wait,
        ack,
    } = o;
    let s = open(common).await?;
    let t0 = tokio::time::Instant::now();
    // Reach every matching node, not the first one found: wait for discovery to settle, then
    // for every neighbour to tell this publisher its matching subscribers.
    let p = s
        .declare_publisher(key)?
        .congestion_control(crate::CongestionControl::Block);
    let settled = p.wait_settled(wait).await;
    let ready = settled;
    if s.info().links.is_empty() {
        if let Some(e) = s.connect_error() {
            anyhow::bail!("could not reach any node: {e}");
        }
    }
    if !p.matching_status() && !p.wait_matching(wait.saturating_sub(t0.elapsed())).await {
        eprintln!(
            "note: no matching subscriber after {} ms; publishing anyway",
            wait.as_millis()
        );
    } else if !(settled && ready) {
        eprintln!(
            "note: discovery had not settled after {} ms; some subscribers may be missed",
            wait.as_millis()
        );
    }
    if ack.is_some()
        && let Ok(k) = hypha_core::keyexpr::OwnedKeyExpr::new(key.to_string())
    {
        // The storages' queryables answer the acknowledgement: know them first.
        let _ = s
            .wait_queryable(&k, wait.saturating_sub(t0.elapsed()))
            .await;
    }
    let mut denials = s.denials();
    let mut dropped = 0u64;
    let mut reached = 0usize;
    // Publications that reached nobody after earlier ones had reached a subscriber: made while
    // every link to it was down (a blackout), so lost to it.
    let mut unreached = 0u64;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let r = match kind {
            SampleKind::Put => {
                let put = p.put(value.replace("{i}", &i.to_string()));
                match ack {
                    Some(a) => {
                        let r = put.ack(a.into()).await?;
                        eprintln!("{key}: acknowledged by {} storage(s)", r.acked);
                        r
                    }
                    None => put.await?,
                }
            }
            SampleKind::Delete => p.delete().await?,
        };
        dropped += r.dropped;
        if r.destinations == 0 && reached > 0 {
            unreached += 1;
        }
        reached = reached.max(r.destinations);
    }
    eprintln!("{key}: {count} publication(s), reached {reached} destination(s)");
    if !p.flush(Duration::from_secs(5)).await {
        eprintln!("warning: not everything was written before exiting");
    }
    // Every loss this process can know of is a warning and a failure exit (issue 16): dropped
    // for congestion, queued on a link that closed (the process has one publisher, so the
    // node's counter is its), written to a link that died before the peer acknowledged
    // them (probably lost), published while no subscriber was reachable.
    let info = s.info();
    let (link_closed, unconfirmed) = (info.dropped_link_closed, info.dropped_unconfirmed);
    let lost = dropped + link_closed + unconfirmed + unreached;
    if lost > 0 {
        eprintln!(
            "warning: {lost} of {count} publications lost: {dropped} dropped for congested \
             links, {link_closed} queued on links that closed, {unconfirmed} written to links \
             that closed before the peer acknowledged them, {unreached} made while no \
             subscriber was reachable"
        );
        s.close().await;
        anyhow::bail!("{lost} of {count} publications lost");
    }
    // A neighbour's access control answers a refused publication with a notice: give it a
    // moment to arrive (a round trip), so that a refusal is an error, not silence.
    if !s.info().links.is_empty() {
        if let Ok(Some(d)) = tokio::time::timeout(DENIAL_WAIT, denials.recv()).await {
            s.close().await;
            anyhow::bail!("{d}");
        }
    }
    s.close().await;
    Ok(())
}

/// `hypha sub --durable NAME`: prints each sample, then acknowledges it; on exit waits (up to
/// 5 s) until the storage has the acknowledgements.
async fn durable_sub(
    common: &Common,
    keyexpr: &str,
    json: bool,
    count: Option<u64>,
    o: &DurableOpts,
) -> Result<()> {
    use crate::api::durable::Start;
    use std::io::Write;
    let name = o.durable.as_deref().unwrap_or_default();
    let s = open(common).await?;
    let start = match o.start.as_deref() {
        None | Some("all") => Start::All,
        Some("new") => Start::New,
        Some(t) => {
            crate::storage::timeexpr::parse_instant_us(t, crate::storage::timeexpr::now_us())?;
            Start::At(t.to_string())
        }
    };
    let mut b = s
        .declare_subscriber(keyexpr)
        .durable(name)
        .ack_wait(Duration::from_millis(o.ack_wait_ms))
        .max_deliver(o.max_deliver)
        .start(start);
    if let Some(d) = &o.dead_letter {
        b = b.dead_letter(d);
    }
    let d = match b.await {
        Ok(d) => d,
        Err(e) => {
            s.close().await;
            return Err(e.into());
        }
    };
    eprintln!(
        "durable subscriber {name}: position kept by storage {}",
        d.storage()
    );
    let stdout = std::io::stdout();
    let mut n = 0u64;
    loop {
        let x = tokio::select! {
            x = d.recv() => x,
            _ = shutdown_signal() => None,
        };
        let Some(x) = x else { break };
        let line = if json {
            let mut v = sample_json(&x.sample);
            v["deliveries"] = x.deliveries.into();
            v.to_string()
        } else if x.deliveries > 1 {
            format!("{} (delivery {})", sample_line(&x.sample), x.deliveries)
        } else {
            sample_line(&x.sample)
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            break; // stdout closed: not printed, so not acknowledged
        }
        drop(out);
        x.ack();
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    let flushed = d.flush(Duration::from_secs(5)).await;
    let st = d.stats();
    eprintln!(
        "durable subscriber {name}: {} received ({} redelivered, {} duplicates dropped), {} acknowledged",
        st.received.load(std::sync::atomic::Ordering::Relaxed),
        st.redelivered.load(std::sync::atomic::Ordering::Relaxed),
        st.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        st.acked.load(std::sync::atomic::Ordering::Relaxed),
    );
    d.close().await;
    s.close().await;
    if !flushed {
        anyhow::bail!(
            "the storage did not confirm every acknowledgement within 5 s (those samples will come again)"
        );
    }
    Ok(())
}

/// How long `sub` waits for its first link before a failed dial of a configured endpoint
/// (a refused certificate, nobody listening) ends it with that error.
const SUB_REACH_WAIT: Duration = Duration::from_secs(2);

/// How long `put`, `pub` and `delete` wait for an access-control refusal after publishing.
const DENIAL_WAIT: Duration = Duration::from_millis(250);

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Peer(args) => {
            let s = open(&args.common).await?;
            node(&args, s).await?
        }
        Cmd::Router(args) => {
            let (cfg, default_listen) = router_config(&args.node.common, &args.router)?;
            let s = open_router(cfg, default_listen).await?;
            node(&args.node, s).await?
        }
        Cmd::Pub {
            key,
            value,
            count,
            interval_ms,
            wait_ms,
            common,
        } => {
            publish(
                &common,
                &key,
                SampleKind::Put,
                &value,
                PublishOpts {
                    count,
                    interval: Duration::from_millis(interval_ms),
                    wait: Duration::from_millis(wait_ms),
                    ack: None,
                },
            )
            .await?
        }
        Cmd::Put {
            key,
            value,
            wait_ms,
            ack,
            common,
        } => {
            publish(
                &common,
                &key,
                SampleKind::Put,
                &value,
                PublishOpts {
                    count: 1,
                    interval: Duration::ZERO,
                    wait: Duration::from_millis(wait_ms),
                    ack,
                },
            )
            .await?
        }
        Cmd::Delete {
            key,
            wait_ms,
            common,
        } => {
            publish(
                &common,
                &key,
                SampleKind::Delete,
                "",
                PublishOpts {
                    count: 1,
                    interval: Duration::ZERO,
                    wait: Duration::from_millis(wait_ms),
                    ack: None,
                },
            )
            .await?
        }
        Cmd::Sub {
            keyexpr,
            json,
            count,
            durable,
            common,
        } if durable.durable.is_some() => {
            durable_sub(&common, &keyexpr, json, count, &durable).await?
        }
        Cmd::Sub {
            keyexpr,
            json,
            count,
            durable: _,
            common,
        } => {
            let s = open(&common).await?;
            // Awaited: a refusal by a neighbour's access control is an error, not silence (and
            // one that comes later, from a neighbour linked after the declaration, ends it too).
            let mut denials = s.denials();
            let sub = s.declare_subscriber(&keyexpr).capacity(65_536).await?;
            let refused = async {
                loop {
                    match denials.recv().await {
                        Some(d) if sub.denied().is_some() => return d,
                        Some(_) => {}
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::pin!(refused);
            // A subscriber that reached no node at all (a refused certificate, nobody at the
            // configured endpoint) says why and fails, instead of waiting in silence.
            let watched = s.clone();
            let unreachable = async move {
                let _ = watched.wait_settled(SUB_REACH_WAIT).await;
                match watched.connect_error() {
                    Some(e) if watched.info().links.is_empty() => e,
                    _ => std::future::pending().await,
                }
            };
            tokio::pin!(unreachable);
            let mut n = 0u64;
            use std::io::Write;
            let stdout = std::io::stdout();
            loop {
                let sample = tokio::select! {
                    s = sub.recv() => s,
                    _ = shutdown_signal() => None,
                    d = &mut refused => {
                        s.close().await;
                        anyhow::bail!("{d}");
                    }
                    e = &mut unreachable => {
                        s.close().await;
                        anyhow::bail!("could not reach any node: {e}");
                    }
                };
                let Some(sample) = sample else { break };
                let line = if json {
                    sample_json(&sample).to_string()
                } else {
                    sample_line(&sample)
                };
                let mut out = stdout.lock();
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    break; // stdout closed
                }
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
            s.close().await;
        }
        Cmd::Scout { secs, common: _ } => scout(Duration::from_secs(secs)).await?,
        Cmd::Get {
            selector,
            json,
            target,
            consolidation,
            timeout_ms,
            wait_ms,
            common,
        } => {
            let get_args = Get {
                selector,
                json,
                target: target.into(),
                consolidation: consolidation.into(),
                timeout: Duration::from_millis(timeout_ms),
                wait: Duration::from_millis(wait_ms),
            };
            get(&common, get_args).await?
        }
        Cmd::Queryable {
            keyexpr,
            value,
            common,
        } => {
            let s = open(&common).await?;
            let q = s.declare_queryable(&keyexpr).stream()?;
            println!(
                "{}",
                serde_json::json!({"event": "ready", "id": s.id().to_string(),
                    "listening": s.info().listening.iter().map(|e| e.to_string()).collect::<Vec<_>>()})
            );
            let own_key_is_concrete = crate::keyexpr::KeyExpr::new(&keyexpr)
                .map(|k| !k.is_wild())
                .unwrap_or(false);
            loop {
                let query = tokio::select! {
                    q = q.recv() => q,
                    _ = shutdown_signal() => None,
                };
                let Some(query) = query else { break };
                // A sample's key is concrete: answer on the queried key, or on our own when the
                // query is a wildcard and ours is concrete; otherwise say why there is no value.
                let key = query.key_expr();
                let r = if !key.is_wild() {
                    let key = key.to_string();
                    query.reply(&key, value.clone()).await
                } else if own_key_is_concrete {
                    query.reply(&keyexpr, value.clone()).await
                } else {
                    query
                        .reply_err(format!(
                            "{keyexpr} holds no concrete key to answer {} with: ask a concrete key",
                            query.key_expr()
                        ))
                        .await
                };
                if let Err(e) = r {
                    eprintln!("warning: reply failed: {e}");
                }
            }
            s.close().await;
        }
        Cmd::Storage {
            keyexpr,
            opts,
            common,
        } => {
            let s = open(&common).await?;
            let st = crate::storage::start(&s, storage_config(&keyexpr, &opts)?).await?;
            println!(
                "{}",
                serde_json::json!({"event": "ready", "id": s.id().to_string(),
                "listening": s.info().listening.iter().map(|e| e.to_string()).collect::<Vec<_>>()})
            );
            shutdown_signal().await;
            st.close().await;
            s.close().await;
        }
        Cmd::Acl {
            cmd:
                AclCmd::Check {
                    config,
                    principal,
                    op,
                    key,
                    json,
                },
        } => acl_check(&config, &principal, &op, &key, json)?,
        Cmd::Acl {
            cmd: AclCmd::Token { principal },
        } => {
            crate::acl::Principal::new(&principal)?;
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let token = crate::digest::to_hex(&raw);
            println!("# the node presenting it ([auth] token, or token_file holding it):");
            println!("[auth]\ntoken = \"{token}\"\n");
            println!("# the listeners' configuration:");
            println!(
                "[[acl.token]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"",
                crate::digest::to_hex(&crate::acl::token_hash(token.as_bytes()))
            );
        }
        Cmd::Info {
            wait_ms,
            json,
            common,
        } => {
            let s = open(&common).await?;
            let _ = s
                .wait_peers(usize::MAX, Duration::from_millis(wait_ms))
                .await;
            let info = s.info();
            if !json {
                let me = format!("@/{}/links/**", info.id);
                let links = view::admin(&s, &me, Duration::from_secs(2)).await;
                print!("{}", view::info_table(&info, &links));
                let backbone = view::admin(&s, "@/*/backbone", Duration::from_secs(2)).await;
                print!("{}", view::backbone_table(&backbone));
                s.close().await;
                return Ok(());
            }
            // The backbone as routers reachable from here see it (LSDB, routes, DR).
            let backbone = view::admin(&s, "@/*/backbone", Duration::from_secs(2)).await;
            let links: Vec<serde_json::Value> = info
                .links
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "node": l.node.to_string(), "mode": l.mode.as_str(), "kind": l.kind,
                        "remote": l.remote.to_string(), "sent": l.sent, "dropped": l.dropped,
                        "received": l.received, "queued_bytes": l.queued_bytes,
                        "declarations": l.declarations, "interests": l.interests,
                        "declared_to": l.declared_to, "denied_in": l.denied_in,
                        "denied_out": l.denied_out, "principal": l.principal,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "id": info.id.to_string(), "mode": info.mode.as_str(),
                    "role": info.mode.as_str(),
                    "listening": info.listening.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "links": links, "published": info.published, "received": info.received,
                    "dropped": info.dropped, "dropped_link_closed": info.dropped_link_closed,
                    "dropped_unconfirmed": info.dropped_unconfirmed,
                    "forwarded": info.forwarded, "denied": info.denied,
                    "refused_handshaking": info.refused_handshaking,
                    "refused_identity": info.refused_identity,
                    "denials_received": info.denials_received,
                    "backbone": backbone,
                    "serial_framing": {
                        "frames": info.serial_framing.frames,
                        "crc_errors": info.serial_framing.crc_errors,
                        "cobs_errors": info.serial_framing.cobs_errors,
                        "overflows": info.serial_framing.overflows,
                    },
                })
            );
            s.close().await;
        }
        Cmd::Top {
            node,
            interval_ms,
            once,
            wait_ms,
            mut common,
        } => top(node, interval_ms, once, wait_ms, &mut common).await?,
    }
    Ok(())
}

/// `hypha top`: a client (by default) reading a node's admin space every `interval_ms`.
async fn top(
    node: Option<String>,
    interval_ms: u64,
    once: bool,
    wait_ms: u64,
    common: &mut Common,
) -> Result<()> {
    use std::io::Write;
    common.mode.get_or_insert(ModeArg::Client);
    let s = open(common).await?;
    let target = match node {
        Some(n) => n,
        None => {
            s.wait_peers(1, Duration::from_millis(wait_ms)).await;
            match s.info().links.first() {
                Some(l) => l.node.to_string(),
                None => {
                    s.close().await;
                    anyhow::bail!("no node to show: no link within {wait_ms} ms (--connect EP)");
                }
            }
        }
    };
    let interval = Duration::from_millis(interval_ms.max(100));
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut t = view::Top::default();
    if once {
        t.frame(&s, &target, interval, timeout).await;
        tokio::time::sleep(interval).await;
        print!("{}", t.frame(&s, &target, interval, timeout).await);
        s.close().await;
        return Ok(());
    }
    let draw = async {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let frame = t.frame(&s, &target, interval, timeout).await;
            let mut out = std::io::stdout().lock();
            if write!(out, "{}{frame}", view::CLEAR)
                .and_then(|_| out.flush())
                .is_err()
            {
                break;
            }
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = draw => {}
    }
    s.close().await;
    Ok(())
}

/// `peer` and `router`: runs the node `s` until interrupted, with what `args` asks for.
async fn node(args: &NodeArgs, s: Session) -> Result<()> {
    use std::io::Write;
    let NodeArgs {
        sub,
        publish,
        value,
        interval_ms,
        token,
        liveliness,
        storage,
        storage_opts,
        http,
        common,
    } = args;
    let mut storages = Vec::new();
    for k in storage {
        let mut o = storage_opts.clone();
        if storage.len() > 1 {
            // One directory per storage.
            o.data_dir = o.data_dir.map(|d| d.join(k.replace(['/', '*', '$'], "_")));
        }
        storages.push(crate::storage::start(&s, storage_config(k, &o)?).await?);
    }
    let http_cfg = config(common)?.http;
    let gateway = match http.or(http_cfg.listen) {
        Some(addr) => Some(crate::http::serve(s.clone(), addr, &http_cfg).await?),
        None => None,
    };
    let info = s.info();
    let listening: Vec<String> = info.listening.iter().map(|e| e.to_string()).collect();
    eprintln!(
        "hypha {} {} listening on {}",
        info.mode,
        info.id,
        listening.join(", ")
    );
    let mut ready =
        serde_json::json!({"event": "ready", "id": info.id.to_string(), "listening": listening});
    if let Some(g) = &gateway {
        let scheme = if http_cfg.tls { "https" } else { "http" };
        eprintln!(
            "http gateway and live page on {scheme}://{}/",
            g.local_addr()
        );
        ready["http"] = g.local_addr().to_string().into();
        ready["http_url"] = format!("{scheme}://{}/", g.local_addr()).into();
    }
    println!("{ready}");
    let _tokens = token
        .iter()
        .map(|t| s.liveliness().declare_token(t))
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut subs = Vec::new();
    for k in sub {
        let tx = tx.clone();
        subs.push(s.declare_subscriber(k).callback(move |sample| {
            let mut v = sample_json(&sample);
            v["event"] = "sample".into();
            let _ = tx.send(v.to_string());
        })?);
    }
    let mut watchers = Vec::new();
    for k in liveliness {
        let l = s.liveliness().declare_subscriber(k)?;
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(x) = l.recv().await {
                let ev = if x.kind == SampleKind::Put {
                    "alive"
                } else {
                    "gone"
                };
                let line = serde_json::json!({"event": ev, "key": &*x.key}).to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let printer = async {
        // Ends only if stdout is closed; with nothing to print it waits for the signal.
        loop {
            let Some(line) = rx.recv().await else {
                std::future::pending::<()>().await;
                break;
            };
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    };
    let publisher = async {
        let Some(key) = publish.as_deref() else {
            return std::future::pending::<Result<()>>().await;
        };
        let p = s.declare_publisher(key)?;
        let mut i = 0u64;
        loop {
            p.put(value.replace("{i}", &i.to_string())).await?;
            i += 1;
            tokio::time::sleep(Duration::from_millis(*interval_ms)).await;
        }
    };
    let reload = reload_on_sighup(&s, common.config.clone());
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = printer => {}
        r = publisher => r?,
        _ = reload => {}
    }
    drop(subs);
    for w in watchers {
        w.abort();
    }
    for st in storages {
        st.close().await;
    }
    s.close().await;
    Ok(())
}

/// On SIGHUP, reads the configuration file again and applies its `[acl]` (links stay up). A
/// file that no longer parses is reported and the current rules stay.
async fn reload_on_sighup(s: &Session, file: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return std::future::pending().await;
        };
        while hup.recv().await.is_some() {
            let Some(path) = &file else {
                tracing::warn!("SIGHUP: no --config file to reload");
                continue;
            };
            match Config::from_file(path) {
                Ok(c) => {
                    let rules = c.acl.as_ref().map_or(0, |_| 1);
                    s.set_acl(c.acl);
                    tracing::info!(file = %path.display(), "SIGHUP: access control reloaded ({})",
                        if rules == 0 { "no [acl]: none" } else { "[acl] applied" });
                    println!(
                        "{}",
                        serde_json::json!({"event": "acl_reloaded", "file": path.display().to_string()})
                    );
                }
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the current rules"),
            }
        }
    }
    std::future::pending().await
}

/// `hypha acl check`.
fn acl_check(
    config: &std::path::Path,
    principal: &str,
    op: &str,
    key: &str,
    json: bool,
) -> Result<()> {
    use crate::acl::{Acl, Principal, op_name, parse_ops};
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let acl = Acl::from_toml(&text).with_context(|| format!("{}", config.display()))?;
    let p = if principal == crate::acl::ANONYMOUS {
        Principal::anonymous()
    } else {
        Principal::new(principal)?
    };
    let ops = parse_ops(op).filter(|v| v.len() == 1).ok_or_else(|| {
        anyhow::anyhow!("--op {op}: expected put, delete, sub, query, queryable, reply, token, token_sub or admin")
    })?;
    let k = crate::keyexpr::OwnedKeyExpr::autocanonize(key.to_string())
        .with_context(|| format!("--key {key}"))?;
    let d = acl.decide(&p, ops[0], &k.as_keyexpr());
    let roles = acl.roles_of(&p);
    let verdict = if d.allow { "allow" } else { "deny" };
    if json {
        println!(
            "{}",
            serde_json::json!({"decision": verdict, "rule": &*d.rule, "principal": p.name(),
                "roles": roles, "op": op_name(ops[0]), "key": k.as_str()})
        );
    } else {
        let how = if crate::acl::is_concrete(ops[0]) || !k.as_keyexpr().is_wild() {
            ""
        } else {
            " (a wildcard declaration: accepted if any key may pass; each key is then judged at delivery)"
        };
        println!(
            "{verdict}: {} on {} by {} (roles: {}), decided by rule {:?}{how}",
            op_name(ops[0]),
            k,
            p.name(),
            if roles.is_empty() {
                "none".to_string()
            } else {
                roles.join(", ")
            },
            &*d.rule
        );
    }
    Ok(())
}

/// What `get` asks.
struct Get {
    selector: String,
    json: bool,
    target: QueryTarget,
    consolidation: Consolidation,
    timeout: Duration,
    wait: Duration,
}

async fn get(common: &Common, q: Get) -> Result<()> {
    let Get {
        selector,
        json,
        target,
        consolidation,
        timeout,
        wait,
    } = q;
    let selector = selector.as_str();
    let (key, _) = crate::api::query::parse_selector(selector)
        .map_err(|e| anyhow::anyhow!("invalid selector {selector:?}: {e}"))?;
    let s = open(common).await?;
    // Wait (briefly) until a queryable for the key is known, so a one-shot get is not lost to
    // discovery.
    let t0 = tokio::time::Instant::now();
    let _ = s.wait_settled(wait).await;
    let known = s
        .wait_queryable(&key, wait.saturating_sub(t0.elapsed()))
        .await;
    if s.info().links.is_empty() && !known {
        if let Some(e) = s.connect_error() {
            anyhow::bail!("could not reach any node: {e}");
        }
    }
    let asked = tokio::time::Instant::now();
    let mut replies = s
        .get(selector)
        .target(target)
        .consolidation(consolidation)
        .timeout(timeout)
        .send()
        .await?;
    let mut n = 0;
    while let Some(r) = replies.recv().await {
        n += 1;
        let line = match (&r.result, json) {
            (Ok(sample), true) => sample_json(sample).to_string(),
            (Ok(sample), false) => sample_line(sample),
            (Err(e), true) => serde_json::json!({"kind": "error",
                "payload": String::from_utf8_lossy(&e.payload)})
            .to_string(),
            (Err(e), false) => format!("error {}", String::from_utf8_lossy(&e.payload)),
        };
        println!("{line}");
    }
    let took = asked.elapsed();
    s.close().await;
    if n == 0 {
        if !known {
            anyhow::bail!(
                "no queryable or storage matching {selector} was found within {} ms",
                wait.as_millis()
            );
        }
        if took < timeout {
            anyhow::bail!(
                "every queryable matching {selector} answered, with nothing (after {} ms)",
                took.as_millis()
            );
        }
        anyhow::bail!(
            "no reply to {selector} within {} ms (the matching queryables did not finish)",
            timeout.as_millis()
        );
    }
    Ok(())
}

async fn scout(d: Duration) -> Result<()> {
    use hypha_transports::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent};
    let me = hypha_core::id::NodeId::from_u128(
        (u128::from(crate::runtime::random_u64()) << 64) | u128::from(crate::runtime::random_u64()),
    );
    // Browse only: with no endpoints, nothing of ours is announced.
    let (disc, mut events) = Discovery::start(DiscoveryConfig::new(
        me,
        hypha_core::wire::Mode::Client,
        Vec::new(),
    ))?;
    let deadline = tokio::time::Instant::now() + d;
    let mut seen = 0;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let DiscoveryEvent::Found {
            node_id,
            mode,
            endpoints,
        } = ev
        {
            seen += 1;
            println!(
                "{}",
                serde_json::json!({"id": node_id.to_string(), "mode": mode.as_str(),
                    "endpoints": endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>()})
            );
        }
    }
    disc.stop().await;
    if seen == 0 {
        eprintln!("no Hypha node answered within {} s", d.as_secs());
    }
    Ok(())
}

/// Parses the process arguments and runs the command; exits non-zero with one line on error.
pub fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPHA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: a cause whose text the message
/// already shows (errors that print their source) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("hypha").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn node_args(args: &[&str]) -> NodeArgs {
        match parse(args).unwrap() {
            Cmd::Peer(a) => a,
            Cmd::Router(a) => a.node,
            _ => panic!("not peer or router: {args:?}"),
        }
    }

    #[test]
    fn router_backbone_flags_reach_the_config() {
        let Cmd::Router(r) = parse(&[
            "router",
            "--site",
            "depot",
            "--backbone",
            "quic/127.0.0.1:7450",
            "--backbone",
            "tcp/127.0.0.1:7451",
            "--cost",
            "20",
        ])
        .unwrap() else {
            panic!("not a router")
        };
        let (cfg, _) = router_config(&r.node.common, &r.router).unwrap();
        assert_eq!(cfg.router.site, "depot");
        assert_eq!(cfg.router.backbone.len(), 2);
        assert_eq!(cfg.router.cost, Some(20));
        assert_eq!(cfg.lease_ms, crate::config::ROUTER_LEASE_MS);
        let Cmd::Router(r) = parse(&["router", "--backbone", "bogus"]).unwrap() else {
            panic!("not a router")
        };
        let e = router_config(&r.node.common, &r.router).err().unwrap();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let Cmd::Router(r) = parse(&["router", "--advertise", "quic/198.51.100.7:7447"]).unwrap()
        else {
            panic!("not a router")
        };
        let (cfg, _) = router_config(&r.node.common, &r.router).unwrap();
        assert_eq!(
            cfg.router.advertise[0].to_string(),
            "quic/198.51.100.7:7447"
        );
        let Cmd::Router(r) = parse(&["router", "--advertise", "unix//tmp/r.sock"]).unwrap() else {
            panic!("not a router")
        };
        let e = router_config(&r.node.common, &r.router).err().unwrap();
        assert!(format!("{e:#}").contains("router.advertise"), "{e:#}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_backends_targets_and_consolidations_are_value_enums() {
        let a = node_args(&["peer", "--mode", "client", "--backend", "memory"]);
        assert_eq!(a.common.mode.map(Mode::from), Some(Mode::Client));
        assert_eq!(a.storage_opts.backend, BackendArg::Memory);
        assert_eq!(node_args(&["peer"]).storage_opts.backend, BackendArg::Log);
        match parse(&[
            "get",
            "k/**",
            "--target",
            "complete",
            "--consolidation",
            "latest",
        ]) {
            Ok(Cmd::Get {
                target,
                consolidation,
                ..
            }) => {
                assert_eq!(QueryTarget::from(target), QueryTarget::AllComplete);
                assert_eq!(Consolidation::from(consolidation), Consolidation::Latest);
            }
            _ => panic!("get did not parse"),
        }
        match parse(&["get", "k/**"]) {
            Ok(Cmd::Get {
                target,
                consolidation,
                ..
            }) => {
                assert_eq!(QueryTarget::from(target), QueryTarget::BestMatching);
                assert_eq!(Consolidation::from(consolidation), Consolidation::Auto);
            }
            _ => panic!("get did not parse"),
        }
        for bad in [
            &["peer", "--mode", "broker"][..],
            &["storage", "k/**", "--backend", "floppy"],
            &["get", "k/**", "--target", "nearest"],
            &["get", "k/**", "--consolidation", "newest"],
        ] {
            let e = parse(bad).err().unwrap();
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{bad:?}");
            // clap lists what is accepted.
            assert!(e.to_string().contains("possible values"), "{e}");
        }
    }

    #[test]
    fn router_listens_on_7447_unless_told_otherwise() {
        let a = node_args(&["router", "--no-mdns"]);
        let (cfg, default_listen) = router_config(&a.common, &RouterArgs::default()).unwrap();
        assert_eq!(cfg.mode, Mode::Router);
        assert!(default_listen);
        assert_eq!(cfg.listen, vec![endpoint(ROUTER_LISTEN).unwrap()]);
        assert_eq!(
            endpoint(ROUTER_LISTEN_V4).unwrap().to_string(),
            ROUTER_LISTEN_V4
        );

        let a = node_args(&["router", "--listen", "tcp/127.0.0.1:0", "--mode", "router"]);
        let (cfg, default_listen) = router_config(&a.common, &RouterArgs::default()).unwrap();
        assert_eq!((cfg.mode, default_listen), (Mode::Router, false));
        assert_eq!(cfg.listen, vec![endpoint("tcp/127.0.0.1:0").unwrap()]);

        // A configuration file's listen endpoints are kept, and its mode is overridden.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("router.toml");
        std::fs::write(&file, "mode = \"peer\"\nlisten = [\"udp/127.0.0.1:0\"]\n").unwrap();
        let a = node_args(&["router", "--config", file.to_str().unwrap()]);
        let (cfg, default_listen) = router_config(&a.common, &RouterArgs::default()).unwrap();
        assert_eq!((cfg.mode, default_listen), (Mode::Router, false));
        assert_eq!(cfg.listen, vec![endpoint("udp/127.0.0.1:0").unwrap()]);

        let a = node_args(&["router", "--mode", "peer"]);
        let e = router_config(&a.common, &RouterArgs::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("--mode peer"), "{e}");
    }

    #[test]
    fn only_a_taken_port_stops_the_ipv4_fallback() {
        let ep = endpoint(ROUTER_LISTEN).unwrap();
        let bind = |kind| hypha_transports::ListenError::Bind {
            endpoint: ep.clone(),
            source: std::io::Error::from(kind),
        };
        assert!(port_taken(&bind(std::io::ErrorKind::AddrInUse)));
        assert!(!port_taken(&bind(std::io::ErrorKind::AddrNotAvailable)));
        assert!(!port_taken(&bind(std::io::ErrorKind::Unsupported)));
        assert!(!port_taken(&hypha_transports::ListenError::Address(
            ep,
            "no IPv6".into()
        )));
    }

    #[tokio::test]
    async fn router_command_opens_a_node_in_router_mode() {
        let a = node_args(&["router", "--no-mdns", "--listen", "tcp/127.0.0.1:0"]);
        let (cfg, default_listen) = router_config(&a.common, &RouterArgs::default()).unwrap();
        let s = open_router(cfg, default_listen).await.unwrap();
        let info = s.info();
        assert_eq!(info.mode, Mode::Router);
        assert_eq!(info.listening.len(), 1);
        s.close().await;
    }
}
