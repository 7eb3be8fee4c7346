//! Node configuration: one TOML file, every field optional with a sane default, overridable in
//! code or by CLI flags.
//!
//! ```toml
//! # hypha.toml — every field optional
//! id = "0123456789abcdef0123456789abcdef"  # default: random
//! mode = "peer"                            # peer | client | router
//! listen = ["quic/0.0.0.0:0"]              # default: QUIC on every interface, any port
//! connect = ["quic/192.0.2.10:7447"]       # default: none
//! mdns = true                              # announce and discover on the LAN
//! lease_ms = 3000                          # link lease; keep-alives every lease/4
//!                                          # (default 3000; 2000 for a router: a silent
//!                                          # backbone cut is detected in 2 s)
//! batch_size = 65535                       # largest batch on a link
//! timestamping = true                      # stamp every put with the node's HLC
//!
//! [tls]                                    # default: self-signed certificate
//! ca = "ca.pem"
//! cert = "node.pem"
//! key = "node.key"
//! mutual = false
//!
//! [acl]                                    # access control (see the `acl` module)
//! default = "deny"
//! require_auth = true
//! [[acl.rule]]
//! who = ["robot/*"]
//! ops = ["put"]
//! keys = ["fleet/${id.last}/**"]
//!
//! [router]                                # routers only: the backbone between sites
//! site = "depot"                           # its site (routers of one site elect one
//!                                          # designated router to face the peers)
//! backbone = ["quic/203.0.113.5:7447"]     # routers of other sites to keep a link to
//! cost = 20                                # their link cost (default: the far end's, or 100)
//! advertise = ["quic/198.51.100.7:7447"]   # where other routers' clients reach this one
//!                                          # (behind NAT; default: listeners, 0.0.0.0 → its
//!                                          # interface addresses)
//!
//! [queues]
//! lane_bytes = 1048576                     # per link and priority lane
//! subscriber = 1024                        # samples buffered per stream subscriber
//! block_ms = 100                           # longest a Block publisher waits per destination
//! ```

use hypha_core::id::NodeId;
use hypha_core::wire::Mode;
use hypha_transports::{Endpoint, TlsConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid, a key is unknown, or a value has the wrong type.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if any.
        path: Option<PathBuf>,
        /// The parser's message (names the field and the line).
        message: String,
    },
    /// A field has a value out of range.
    #[error("invalid value for `{field}`: {message}")]
    Value {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Queue sizes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Bytes queued per link and priority lane before a publisher drops or blocks.
    pub lane_bytes: usize,
    /// Samples buffered per stream subscriber before newer ones are dropped (and counted).
    pub subscriber: usize,
    /// Longest a `Block` publisher waits for one destination before dropping (milliseconds).
    pub block_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lane_bytes: 1 << 20,
            subscriber: 1024,
            block_ms: 100,
        }
    }
}

/// The HTTP gateway (`[http]`, issue 14): used by the `http` feature (`hypha peer --http`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the gateway listens (`127.0.0.1:8000`); none unless given (`--http` overrides).
    pub listen: Option<std::net::SocketAddr>,
    /// Origins sent `Access-Control-Allow-Origin` (`"*"` for any): none by default.
    pub cors: Vec<String>,
    /// SHA-256 digests (hex) of the bearer tokens accepted; empty: no token needed.
    pub tokens_sha256: Vec<String>,
    /// Samples queued per SSE client before they are dropped and announced (`event: lag`).
    pub sse_queue: usize,
    /// Bearer tokens that name a principal (`[[http.token]] principal = "ops", sha256 = "…"`):
    /// a caller presenting one is judged by the node's access control as that principal
    /// (callers with a `tokens_sha256` token, or none, as `anonymous`).
    pub token: Vec<HttpToken>,
    /// Serve HTTPS (TLS 1.2 or 1.3, `http/1.1`) instead of plain HTTP.
    pub tls: bool,
    /// PEM certificate chain of the gateway (with `tls`; default: `[tls] cert`).
    pub cert: Option<PathBuf>,
    /// PEM private key of the gateway (with `tls`; default: `[tls] key`).
    pub key: Option<PathBuf>,
    /// PEM CA whose client certificates identify HTTPS callers (with `tls`; default:
    /// `[tls] ca`). A verified certificate names its principal as a link's does (the ACL's
    /// `identity_from`); a caller without one falls back to bearer tokens. None: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
}

/// Opt-in metrics (`[metrics]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Key expressions (at most [`MAX_METRIC_PREFIXES`]) each counted by
    /// `hypha_prefix_samples_total{prefix}` and `hypha_prefix_bytes_total{prefix}`: samples
    /// published here or received from a neighbour whose key intersects it. None by default
    /// (the metrics carry no per-key labels unless asked).
    pub prefixes: Vec<String>,
}

/// Most `[metrics] prefixes` a node counts (each is one label value, and one key-expression
/// match per newly resolved key).
pub const MAX_METRIC_PREFIXES: usize = 64;

/// One `[[http.token]]`: a bearer token's SHA-256 (hex) and the principal it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToken {
    /// The principal the node's ACL sees (`ops`, `robot/r42`).
    pub principal: String,
    /// SHA-256 of the token, 64 hex digits (`hypha::http::token_digest`).
    pub sha256: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            cors: Vec::new(),
            tokens_sha256: Vec::new(),
            sse_queue: 1024,
            token: Vec::new(),
            tls: false,
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

/// Caps on what one neighbour may make this node hold (`[limits]`). A face that exceeds one
/// is closed with a reason naming the cap (e.g. `cap limits.max_declarations exceeded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Subscribers + queryables + liveliness tokens one neighbour may declare.
    pub max_declarations: usize,
    /// Interests one neighbour may keep open.
    pub max_interests: usize,
    /// Queries from one neighbour not yet finished.
    pub max_pending_queries: usize,
    /// Longest key expression accepted from a neighbour, in bytes.
    pub max_key_len: usize,
    /// Largest message (payload + attachment) sent or received, in bytes. A put above it is
    /// refused with `PublishError::TooLarge`; a neighbour sending one is disconnected.
    pub max_message_bytes: usize,
    /// Accepted links still handshaking, node-wide; more are closed at once (half-open
    /// connections cannot take memory without limit).
    pub max_handshaking: usize,
    /// Accepted links still handshaking from one source address.
    pub max_handshaking_per_source: usize,
    /// Bytes all links together may hold in partial reassemblies (messages split in
    /// fragments whose last piece has not arrived). Past it, the link that grows it has its
    /// largest partial message evicted (counted; on a reliable lane that link is closed).
    pub max_reassembly_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let c = crate::net::Caps::default();
        LimitsConfig {
            max_declarations: c.declarations,
            max_interests: c.interests,
            max_pending_queries: c.pending_queries,
            max_key_len: c.key_len,
            max_message_bytes: 16 << 20,
            max_handshaking: 256,
            max_handshaking_per_source: 32,
            max_reassembly_bytes: 256 << 20,
        }
    }
}

impl LimitsConfig {
    pub(crate) fn caps(&self) -> crate::net::Caps {
        crate::net::Caps {
            declarations: self.max_declarations,
            interests: self.max_interests,
            pending_queries: self.max_pending_queries,
            key_len: self.max_key_len,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsFile {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    mutual: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    id: Option<String>,
    mode: String,
    listen: Option<Vec<String>>,
    connect: Vec<String>,
    mdns: bool,
    lease_ms: Option<u64>,
    batch_size: u64,
    router: RouterFile,
    timestamping: bool,
    tls: TlsFile,
    queues: QueueConfig,
    limits: LimitsConfig,
    acl: Option<crate::acl::AclFile>,
    auth: AuthFile,
    http: HttpConfig,
    metrics: MetricsConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RouterFile {
    site: String,
    backbone: Vec<String>,
    cost: Option<u32>,
    advertise: Vec<String>,
}

/// A router's backbone settings (`[router]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// Its site (empty: none). Routers of one site elect one designated router that relays
    /// between the site's peers and the other sites.
    pub site: String,
    /// Routers to keep a backbone link to.
    pub backbone: Vec<Endpoint>,
    /// The cost of those links (default: the far end's, or 100).
    pub cost: Option<u32>,
    /// Where clients of other routers should reach this one when they fail over to it (a
    /// router behind NAT or a load balancer: its public endpoints). Empty (the default): its
    /// network listeners, an unspecified host (`0.0.0.0`, `[::]`) replaced by the addresses
    /// of its interfaces. Network endpoints only, at most [`MAX_ADVERTISE`].
    pub advertise: Vec<Endpoint>,
}

/// Endpoints a router may advertise, at most (they travel in its link-state advertisement).
pub const MAX_ADVERTISE: usize = 16;

/// Checks a router's `advertise` list: network endpoints (a unix or in-process one reaches
/// nothing on another host), at most [`MAX_ADVERTISE`].
pub(crate) fn check_advertise(eps: &[Endpoint]) -> Result<(), ConfigError> {
    if eps.len() > MAX_ADVERTISE {
        return Err(ConfigError::Value {
            field: "router.advertise",
            message: format!("{} endpoints (at most {MAX_ADVERTISE})", eps.len()),
        });
    }
    if let Some(e) = eps.iter().find(|e| !matches!(e, Endpoint::Net { .. })) {
        return Err(ConfigError::Value {
            field: "router.advertise",
            message: format!(
                "{e}: only network endpoints (tcp, tls, quic, udp) reach another host"
            ),
        });
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthFile {
    token: Option<String>,
    token_file: Option<PathBuf>,
}

impl Default for File {
    fn default() -> Self {
        File {
            id: None,
            mode: "peer".into(),
            listen: None,
            connect: Vec::new(),
            mdns: true,
            lease_ms: None,
            batch_size: 65_535,
            router: RouterFile::default(),
            timestamping: true,
            tls: TlsFile::default(),
            queues: QueueConfig::default(),
            limits: LimitsConfig::default(),
            acl: None,
            auth: AuthFile::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Node id (random when `None`).
    pub id: Option<NodeId>,
    /// Peer, client or router.
    pub mode: Mode,
    /// Endpoints to listen on.
    pub listen: Vec<Endpoint>,
    /// Endpoints to connect to (redialled with backoff when they fail).
    pub connect: Vec<Endpoint>,
    /// Announce and discover peers with mDNS.
    pub mdns: bool,
    /// Link lease in milliseconds.
    pub lease_ms: u64,
    /// The backbone (routers only).
    pub router: RouterConfig,
    /// Largest batch on a link (64 to 65,535).
    pub batch_size: u16,
    /// Stamp every put with the node's HLC (default: on; storages and late joiners rely on
    /// it; off saves 26 bytes per message).
    pub timestamping: bool,
    /// TLS files.
    pub tls: TlsConfig,
    /// Queue sizes.
    pub queues: QueueConfig,
    /// Caps on remote input per neighbour.
    pub limits: LimitsConfig,
    /// Access control (none: every neighbour may do anything).
    pub acl: Option<crate::acl::Acl>,
    /// This node's pre-shared token, presented when it dials over an encrypted link (`[auth]
    /// token = "…"` or `token_file = "…"`, whose first line is the token).
    pub auth_token: Option<String>,
    /// The HTTP gateway's settings (`[http]`).
    pub http: HttpConfig,
    /// Opt-in metrics (`[metrics]`: per-prefix counters).
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are those of an empty file.
        Config::from_toml("").unwrap_or_else(|_| Config {
            id: None,
            mode: Mode::Peer,
            listen: Vec::new(),
            connect: Vec::new(),
            mdns: true,
            lease_ms: 3_000,
            router: RouterConfig::default(),
            batch_size: 65_535,
            timestamping: true,
            tls: TlsConfig::default(),
            queues: QueueConfig::default(),
            limits: LimitsConfig::default(),
            acl: None,
            auth_token: None,
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
        })
    }
}

/// A router's default lease: a backbone link gone silent is dead after 2 s.
pub const ROUTER_LEASE_MS: u64 = 2_000;

fn endpoints(field: &'static str, v: &[String]) -> Result<Vec<Endpoint>, ConfigError> {
    v.iter()
        .map(|s| {
            s.parse().map_err(|e| ConfigError::Value {
                field,
                message: format!("{e}"),
            })
        })
        .collect()
}

/// Parses a mode name.
pub fn parse_mode(s: &str) -> Result<Mode, ConfigError> {
    match s {
        "peer" => Ok(Mode::Peer),
        "client" => Ok(Mode::Client),
        "router" => Ok(Mode::Router),
        other => Err(ConfigError::Value {
            field: "mode",
            message: format!("{other:?} (expected peer, client or router)"),
        }),
    }
}

impl Config {
    /// The default listen endpoint: QUIC on every interface, a port chosen by the OS (mDNS
    /// announces the real one).
    pub fn default_listen() -> Endpoint {
        Endpoint::Net {
            protocol: hypha_transports::Protocol::Quic,
            host: hypha_transports::Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into()),
            port: 0,
        }
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, None)
    }

    /// Reads a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path))
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let id = match &f.id {
            Some(s) => Some(NodeId::parse(s).map_err(|e| ConfigError::Value {
                field: "id",
                message: e.to_string(),
            })?),
            None => None,
        };
        let lease_ms = f
            .lease_ms
            .unwrap_or(if parse_mode(&f.mode)? == Mode::Router {
                ROUTER_LEASE_MS
            } else {
                3_000
            });
        check_lease(lease_ms)?;
        let batch_size = u16::try_from(f.batch_size)
            .ok()
            .filter(|b| *b >= 64)
            .ok_or_else(|| ConfigError::Value {
                field: "batch_size",
                message: format!("{} (expected 64 to 65535)", f.batch_size),
            })?;
        if f.queues.lane_bytes < 4096 {
            return Err(ConfigError::Value {
                field: "queues.lane_bytes",
                message: format!("{} (expected at least 4096)", f.queues.lane_bytes),
            });
        }
        if f.queues.subscriber == 0 {
            return Err(ConfigError::Value {
                field: "queues.subscriber",
                message: "0 (expected at least 1)".into(),
            });
        }
        for (field, v) in [
            ("limits.max_declarations", f.limits.max_declarations),
            ("limits.max_interests", f.limits.max_interests),
            ("limits.max_pending_queries", f.limits.max_pending_queries),
            ("limits.max_key_len", f.limits.max_key_len),
            ("limits.max_message_bytes", f.limits.max_message_bytes),
            ("limits.max_handshaking", f.limits.max_handshaking),
            (
                "limits.max_handshaking_per_source",
                f.limits.max_handshaking_per_source,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Value {
                    field,
                    message: "0 (expected at least 1)".into(),
                });
            }
        }
        if f.limits.max_key_len > hypha_core::wire::limits::MAX_KEY_LEN {
            return Err(ConfigError::Value {
                field: "limits.max_key_len",
                message: format!(
                    "{} (expected at most {}: the wire's limit)",
                    f.limits.max_key_len,
                    hypha_core::wire::limits::MAX_KEY_LEN
                ),
            });
        }
        if f.tls.mutual && f.tls.ca.is_none() {
            return Err(ConfigError::Value {
                field: "tls.mutual",
                message: "mutual TLS needs tls.ca".into(),
            });
        }
        if f.tls.cert.is_some() != f.tls.key.is_some() {
            return Err(ConfigError::Value {
                field: "tls.cert",
                message: "tls.cert and tls.key must be given together".into(),
            });
        }
        let mode = parse_mode(&f.mode)?;
        if f.acl.as_ref().is_some_and(|a| a.require_auth) && !(f.tls.mutual && f.tls.ca.is_some()) {
            return Err(ConfigError::Value {
                field: "acl.require_auth",
                message:
                    "needs tls.ca and tls.mutual = true (peers authenticate with certificates)"
                        .into(),
            });
        }
        let acl = match &f.acl {
            Some(a) => Some(crate::acl::Acl::compile(a).map_err(|e| ConfigError::Value {
                field: "acl",
                message: e.to_string(),
            })?),
            None => None,
        };
        let auth_token = match (&f.auth.token, &f.auth.token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Value {
                    field: "auth.token",
                    message: "give auth.token or auth.token_file, not both".into(),
                });
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(p)) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Value {
                        field: "auth.token_file",
                        message: format!("{}: {e}", p.display()),
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if auth_token
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > hypha_core::wire::MAX_TOKEN_LEN)
        {
            return Err(ConfigError::Value {
                field: "auth.token",
                message: format!("must be 1 to {} bytes", hypha_core::wire::MAX_TOKEN_LEN),
            });
        }
        if f.metrics.prefixes.len() > MAX_METRIC_PREFIXES {
            return Err(ConfigError::Value {
                field: "metrics.prefixes",
                message: format!(
                    "{} prefixes (at most {MAX_METRIC_PREFIXES})",
                    f.metrics.prefixes.len()
                ),
            });
        }
        let mut http = f.http.clone();
        if http.tls {
            // The gateway's HTTPS reuses the node's [tls] material unless told otherwise.
            if http.cert.is_none() && http.key.is_none() {
                http.cert = f.tls.cert.clone();
                http.key = f.tls.key.clone();
            }
            if http.client_ca.is_none() {
                http.client_ca = f.tls.ca.clone();
            }
            if http.cert.is_none() || http.key.is_none() {
                return Err(ConfigError::Value {
                    field: "http.tls",
                    message: "needs http.cert and http.key (or tls.cert and tls.key)".into(),
                });
            }
        } else if http.cert.is_some() || http.key.is_some() || http.client_ca.is_some() {
            return Err(ConfigError::Value {
                field: "http.cert",
                message: "http.cert, http.key and http.client_ca need http.tls = true".into(),
            });
        }
        for p in &f.metrics.prefixes {
            if let Err(e) = hypha_core::keyexpr::KeyExpr::new(p) {
                return Err(ConfigError::Value {
                    field: "metrics.prefixes",
                    message: format!("{p:?}: {e}"),
                });
            }
        }
        Ok(Config {
            auth_token,
            acl,
            id,
            mode,
            listen: match &f.listen {
                Some(l) => endpoints("listen", l)?,
                // A client only dials out (it works behind NAT): no listener unless asked.
                None if mode == Mode::Client => Vec::new(),
                None => vec![Self::default_listen()],
            },
            connect: endpoints("connect", &f.connect)?,
            mdns: f.mdns,
            lease_ms,
            router: RouterConfig {
                site: f.router.site.clone(),
                backbone: endpoints("router.backbone", &f.router.backbone)?,
                cost: f.router.cost,
                advertise: {
                    let a = endpoints("router.advertise", &f.router.advertise)?;
                    check_advertise(&a)?;
                    a
                },
            },
            batch_size,
            timestamping: f.timestamping,
            tls: TlsConfig {
                ca: f.tls.ca,
                cert: f.tls.cert,
                key: f.tls.key,
                mutual: f.tls.mutual,
            },
            queues: f.queues,
            limits: f.limits,
            http,
            metrics: f.metrics,
        })
    }
}

/// Leases a node accepts, in ms: from the file and from [`Config`] alike (a shorter lease
/// expires links on a busy machine; tests use 500 ms for quick detection).
pub const LEASE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// `lease_ms` within [`LEASE_MS`], or the error naming the field.
pub(crate) fn check_lease(lease_ms: u64) -> Result<(), ConfigError> {
    if LEASE_MS.contains(&lease_ms) {
        return Ok(());
    }
    Err(ConfigError::Value {
        field: "lease_ms",
        message: format!(
            "{lease_ms} (expected {} to {})",
            LEASE_MS.start(),
            LEASE_MS.end()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_prefixes_are_key_expressions_at_most_64() {
        let c = Config::from_toml("[metrics]\nprefixes = [\"fleet/*\", \"a/**\"]").unwrap();
        assert_eq!(c.metrics.prefixes, ["fleet/*", "a/**"]);
        assert!(Config::from_toml("").unwrap().metrics.prefixes.is_empty());
        let e = Config::from_toml("[metrics]\nprefixes = [\"a//b\"]").unwrap_err();
        assert!(e.to_string().contains("metrics.prefixes"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("\"p/{i}\"")).collect();
        let text = format!("[metrics]\nprefixes = [{}]", many.join(","));
        let e = Config::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
    }

    #[test]
    fn https_reuses_the_nodes_tls_files_unless_told_otherwise() {
        let node = "[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        let c = Config::from_toml(&format!("{node}[http]\ntls = true")).unwrap();
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            (c.http.cert, c.http.key, c.http.client_ca),
            (p("n.pem"), p("n.key"), p("ca.pem"))
        );
        let c = Config::from_toml(&format!(
            "{node}[http]\ntls = true\ncert = \"h.pem\"\nkey = \"h.key\"\nclient_ca = \"c.pem\""
        ))
        .unwrap();
        assert_eq!(
            (c.http.cert, c.http.key, c.http.client_ca),
            (p("h.pem"), p("h.key"), p("c.pem"))
        );
        let e = Config::from_toml("[http]\ntls = true").unwrap_err();
        assert!(e.to_string().contains("http.tls"), "{e}");
        let e = Config::from_toml("[http]\ncert = \"h.pem\"").unwrap_err();
        assert!(e.to_string().contains("http.tls = true"), "{e}");
        assert!(!Config::from_toml(node).unwrap().http.tls);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.mode, Mode::Peer);
        assert_eq!(c.listen, vec![Config::default_listen()]);
        assert!(c.mdns && c.connect.is_empty() && c.id.is_none());
        assert_eq!(c.lease_ms, 3_000);
        assert_eq!(c.queues, QueueConfig::default());
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            r#"
            id = "000102030405060708090a0b0c0d0e0f"
            mode = "router"
            listen = ["tcp/127.0.0.1:7447", "quic/[::]:7447"]
            connect = ["quic/10.0.0.1:7447"]
            mdns = false
            lease_ms = 3000
            batch_size = 1500
            timestamping = true
            [tls]
            ca = "ca.pem"
            cert = "n.pem"
            key = "n.key"
            mutual = true
            [queues]
            lane_bytes = 65536
            subscriber = 10
            block_ms = 5
            "#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Router);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.batch_size, 1500);
        assert!(c.tls.mutual && c.timestamping && !c.mdns);
        assert_eq!(c.queues.subscriber, 10);
        assert_eq!(
            c.id.unwrap().to_string(),
            "000102030405060708090a0b0c0d0e0f"
        );
    }

    #[test]
    fn a_router_advertises_what_it_is_told_within_bounds() {
        let c = Config::from_toml(
            "mode = \"router\"\n[router]\nadvertise = [\"quic/198.51.100.7:7447\", \"tcp/198.51.100.7:7448\"]",
        )
        .unwrap();
        assert_eq!(
            c.router
                .advertise
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
            ["quic/198.51.100.7:7447", "tcp/198.51.100.7:7448"]
        );
        let many: Vec<String> = (0..=MAX_ADVERTISE)
            .map(|i| format!("\"tcp/198.51.100.7:{}\"", 7000 + i))
            .collect();
        let err = Config::from_toml(&format!("[router]\nadvertise = [{}]", many.join(",")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 16"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        for (text, want) in [
            ("listn = []", "listn"),
            ("mode = \"broker\"", "mode"),
            ("lease_ms = 5", "lease_ms"),
            ("batch_size = 70000", "batch_size"),
            ("listen = [\"tcp/1.2.3.4\"]", "listen"),
            ("connect = [\"bogus\"]", "connect"),
            ("id = \"xyz\"", "id"),
            ("mdns = \"yes\"", "mdns"),
            ("[queues]\nsubscriber = 0", "queues.subscriber"),
            ("[tls]\nmutual = true", "tls.mutual"),
            ("[tls]\ncert = \"a\"", "tls.cert"),
            ("[tls]\nbogus = 1", "bogus"),
            ("mode = ", "invalid"),
            (
                "[router]\nadvertise = [\"unix//tmp/r.sock\"]",
                "router.advertise",
            ),
            (
                "[router]\nadvertise = [\"quic/nohost\"]",
                "router.advertise",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
