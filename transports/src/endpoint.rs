//! Endpoints: where a link listens or connects, written `PROTO/ADDRESS`.
//!
//! ```
//! use hypha_transports::Endpoint;
//! let ep: Endpoint = "quic/[::1]:7447".parse().unwrap();
//! assert_eq!(ep.to_string(), "quic/[::1]:7447");
//! assert!("quic/localhost".parse::<Endpoint>().is_err()); // no port
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// The transport of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// QUIC with TLS 1.3 (the default).
    Quic,
    /// TCP with length-prefixed batches.
    Tcp,
    /// UDP, one batch per datagram (best effort).
    Udp,
    /// Unix stream socket.
    Unix,
    /// In-process channel (tests).
    Mem,
    /// Serial framing (`0x00 COBS(batch | CRC-32) 0x00`) over TCP: an emulated board's UART.
    SerialTcp,
    /// TCP with TLS 1.3 (the same certificates as QUIC), length-prefixed batches inside.
    Tls,
    /// Serial framing over a real serial line (a tty: USB adapter, UART, pty).
    Serial,
}

impl Protocol {
    /// The protocol's prefix.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Quic => "quic",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Unix => "unix",
            Protocol::Mem => "mem",
            Protocol::SerialTcp => "serial+tcp",
            Protocol::Tls => "tls",
            Protocol::Serial => "serial",
        }
    }

    /// True if the far end opens the session (sends `Init`) whichever side opened the link: a
    /// device on a serial line is a client that (re)starts its session when it boots.
    pub const fn far_end_opens(self) -> bool {
        matches!(self, Protocol::SerialTcp | Protocol::Serial)
    }
}

/// A host: an IP address or a name to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name.
    Name(String),
}

/// An endpoint: a protocol and an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `quic/HOST:PORT`, `tcp/HOST:PORT`, `tls/HOST:PORT`, `udp/HOST:PORT` or
    /// `serial+tcp/HOST:PORT`.
    Net {
        /// Quic, Tcp, Udp or SerialTcp.
        protocol: Protocol,
        /// Host.
        host: Host,
        /// Port (0: pick one when listening).
        port: u16,
    },
    /// `unix/PATH`.
    Unix(PathBuf),
    /// `mem/NAME`.
    Mem(String),
    /// `serial/PATH#baud=N`: a serial line (tty), e.g. `serial//dev/ttyUSB0#baud=115200`.
    Serial {
        /// The tty's path.
        path: PathBuf,
        /// Line speed in baud ([`DEFAULT_BAUD`] when the text gives none).
        baud: u32,
    },
}

/// The line speed of a `serial/PATH` endpoint written without `#baud=N`.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Why endpoint text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// No `/` between protocol and address.
    #[error("endpoint {0:?} has no protocol: expected PROTO/ADDRESS, e.g. quic/127.0.0.1:7447")]
    NoProtocol(String),
    /// Unknown protocol prefix.
    #[error(
        "unknown protocol {0:?} (expected quic, tls, tcp, udp, unix, mem, serial or serial+tcp)"
    )]
    UnknownProtocol(String),
    /// Address missing.
    #[error("endpoint {0:?} has an empty address")]
    EmptyAddress(String),
    /// `HOST:PORT` without a port.
    #[error("endpoint {0:?} has no port: expected HOST:PORT (IPv6 in brackets: [::1]:7447)")]
    NoPort(String),
    /// Port is not a number in 0..=65535.
    #[error("endpoint {0:?} has an invalid port {1:?}")]
    BadPort(String, String),
    /// Host is not a valid IP address or host name.
    #[error("endpoint {0:?} has an invalid host {1:?}")]
    BadHost(String, String),
    /// `serial/` without a device path before `#`.
    #[error(
        "endpoint {0:?} has no device path: expected serial/PATH#baud=N, e.g. serial//dev/ttyUSB0#baud=115200"
    )]
    NoPath(String),
    /// `#baud=` that is not a positive integer.
    #[error(
        "endpoint {0:?} has an invalid baud rate {1:?}: expected a positive integer, e.g. #baud=115200"
    )]
    BadBaud(String, String),
    /// An option after `#` other than `baud=N`.
    #[error("endpoint {0:?} has an unknown option {1:?}: serial endpoints take #baud=N")]
    BadOption(String, String),
}

impl Endpoint {
    /// The endpoint's protocol.
    pub fn protocol(&self) -> Protocol {
        match self {
            Endpoint::Net { protocol, .. } => *protocol,
            Endpoint::Unix(_) => Protocol::Unix,
            Endpoint::Mem(_) => Protocol::Mem,
            Endpoint::Serial { .. } => Protocol::Serial,
        }
    }

    /// An endpoint for a socket address.
    pub fn from_socket(protocol: Protocol, addr: SocketAddr) -> Self {
        Endpoint::Net {
            protocol,
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Net {
                host: Host::Ip(ip),
                port,
                ..
            } => Some(SocketAddr::new(*ip, *port)),
            _ => None,
        }
    }

    /// Resolves the host (DNS for names) to socket addresses.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Endpoint::Net {
                host: Host::Ip(ip),
                port,
                ..
            } => Ok(vec![SocketAddr::new(*ip, *port)]),
            Endpoint::Net {
                host: Host::Name(n),
                port,
                ..
            } => Ok(tokio::net::lookup_host((n.as_str(), *port))
                .await?
                .collect()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a network endpoint",
            )),
        }
    }

    /// The same endpoint with another port.
    pub fn with_port(&self, new_port: u16) -> Self {
        match self {
            Endpoint::Net { protocol, host, .. } => Endpoint::Net {
                protocol: *protocol,
                host: host.clone(),
                port: new_port,
            },
            other => other.clone(),
        }
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.to_string();
        let (proto, addr) = s
            .split_once('/')
            .ok_or_else(|| EndpointError::NoProtocol(text.clone()))?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "quic" => Protocol::Quic,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "unix" => Protocol::Unix,
            "mem" => Protocol::Mem,
            "serial+tcp" => Protocol::SerialTcp,
            "tls" => Protocol::Tls,
            "serial" => Protocol::Serial,
            _ => return Err(EndpointError::UnknownProtocol(proto.to_string())),
        };
        if addr.is_empty() {
            return Err(EndpointError::EmptyAddress(text));
        }
        match protocol {
            Protocol::Unix => return Ok(Endpoint::Unix(PathBuf::from(addr))),
            Protocol::Mem => return Ok(Endpoint::Mem(addr.to_string())),
            Protocol::Serial => return parse_serial(&text, addr),
            _ => {}
        }
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| EndpointError::BadHost(text.clone(), addr.to_string()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| EndpointError::NoPort(text.clone()))?;
            let ip: std::net::Ipv6Addr = h
                .parse()
                .map_err(|_| EndpointError::BadHost(text.clone(), h.to_string()))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (h, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| EndpointError::NoPort(text.clone()))?;
            if h.contains(':') {
                // A bare IPv6 address: ambiguous without brackets.
                return Err(EndpointError::BadHost(
                    text,
                    format!("{h} (IPv6 needs brackets)"),
                ));
            }
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_)
                    if valid_hostname(h) && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
                {
                    Host::Name(h.to_string())
                }
                Err(_) => return Err(EndpointError::BadHost(text, h.to_string())),
            };
            (host, port)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| EndpointError::BadPort(text.clone(), port.to_string()))?;
        Ok(Endpoint::Net {
            protocol,
            host,
            port,
        })
    }
}

/// `PATH[#baud=N]` of a `serial/` endpoint.
fn parse_serial(text: &str, addr: &str) -> Result<Endpoint, EndpointError> {
    let (path, options) = match addr.split_once('#') {
        Some((p, o)) => (p, Some(o)),
        None => (addr, None),
    };
    if path.is_empty() {
        return Err(EndpointError::NoPath(text.to_string()));
    }
    let mut baud = DEFAULT_BAUD;
    for opt in options.into_iter().flat_map(|o| o.split('&')) {
        match opt.split_once('=') {
            Some(("baud", v)) => {
                baud = v
                    .parse::<u32>()
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| EndpointError::BadBaud(text.to_string(), v.to_string()))?;
            }
            _ => return Err(EndpointError::BadOption(text.to_string(), opt.to_string())),
        }
    }
    Ok(Endpoint::Serial {
        path: PathBuf::from(path),
        baud,
    })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Net {
                protocol,
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            } => {
                write!(f, "{}/[{ip}]:{port}", protocol.as_str())
            }
            Endpoint::Net {
                protocol,
                host: Host::Ip(ip),
                port,
            } => {
                write!(f, "{}/{ip}:{port}", protocol.as_str())
            }
            Endpoint::Net {
                protocol,
                host: Host::Name(n),
                port,
            } => {
                write!(f, "{}/{n}:{port}", protocol.as_str())
            }
            Endpoint::Unix(p) => write!(f, "unix/{}", p.display()),
            Endpoint::Mem(n) => write!(f, "mem/{n}"),
            Endpoint::Serial { path, baud } => {
                write!(f, "serial/{}#baud={baud}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for s in [
            "quic/127.0.0.1:7447",
            "tcp/[::1]:0",
            "udp/[fe80::1]:9",
            "tcp/example.com:80",
            "quic/my-host:7447",
            "unix//tmp/hypha.sock",
            "mem/alpha",
            "serial+tcp/127.0.0.1:4441",
            "serial//dev/ttyUSB0#baud=115200",
            "serial//dev/pts/3#baud=9600",
        ] {
            let ep: Endpoint = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(ep.to_string(), s);
        }
        let ep: Endpoint = "QUIC/10.0.0.1:1".parse().unwrap();
        assert_eq!(ep.protocol(), Protocol::Quic);
        assert_eq!(ep.socket_addr(), Some("10.0.0.1:1".parse().unwrap()));
        let ep: Endpoint = "serial//dev/ttyACM0".parse().unwrap();
        assert_eq!(
            ep,
            Endpoint::Serial {
                path: "/dev/ttyACM0".into(),
                baud: DEFAULT_BAUD
            }
        );
        assert_eq!(ep.to_string(), "serial//dev/ttyACM0#baud=115200");
        assert!(ep.protocol().far_end_opens());
        assert_eq!(ep.socket_addr(), None);
    }

    #[test]
    fn bad_text_names_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("127.0.0.1:7447", "no protocol"),
            ("sctp/1.2.3.4:5", "unknown protocol"),
            ("tcp/", "empty address"),
            ("tcp/1.2.3.4", "no port"),
            ("tcp/1.2.3.4:99999", "invalid port"),
            ("tcp/1.2.3.4:http", "invalid port"),
            ("tcp/::1:80", "IPv6 needs brackets"),
            ("tcp/[::1]", "no port"),
            ("tcp/[zz::1]:5", "invalid host"),
            ("tcp/bad_host!:5", "invalid host"),
            ("tcp/1.2.3.999:5", "invalid host"),
            ("serial/", "empty address"),
            ("serial/#baud=9600", "no device path"),
            (
                "serial//dev/ttyUSB0#baud=fast",
                "invalid baud rate \"fast\"",
            ),
            ("serial//dev/ttyUSB0#baud=0", "invalid baud rate \"0\""),
            ("serial//dev/ttyUSB0#baud=-9600", "invalid baud rate"),
            ("serial//dev/ttyUSB0#baud=", "invalid baud rate"),
            (
                "serial//dev/ttyUSB0#parity=even",
                "unknown option \"parity=even\"",
            ),
            ("serial//dev/ttyUSB0#", "unknown option"),
            ("serials//dev/x", "unknown protocol"),
        ];
        for (text, want) in cases {
            let err = text.parse::<Endpoint>().unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{text}: {err:?} should mention {want:?}"
            );
        }
    }
}
