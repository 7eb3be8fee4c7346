//! A TCP socket's round-trip time as the kernel estimates it (`tcpi_rtt` of `struct tcp_info`),
//! read through socket diagnostics (`NETLINK_SOCK_DIAG`, what `ss -ti` uses) rather than
//! `getsockopt(TCP_INFO)`: no crate used here wraps that option safely (rustix 1.1, nix 0.31,
//! socket2 0.6), and the workspace forbids unsafe code; a netlink socket is plain bytes through
//! rustix's safe `socket`/`send`/`recv`.
//!
//! The probe keeps only the connection's two addresses (it never keeps the socket open); each
//! [`TcpProbe::rtt`] asks the kernel for the one socket with exactly that 4-tuple (one
//! request, one answer, no dump of the socket table). Once the connection has gone the kernel
//! answers `ENOENT` and the probe reports `None`.

use std::net::SocketAddr;
use std::time::Duration;

/// Where a TCP connection is, to ask the kernel about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpProbe {
    local: SocketAddr,
    peer: SocketAddr,
}

impl TcpProbe {
    /// The probe of a connected socket (`None` if its addresses cannot be read).
    pub(crate) fn of(s: &tokio::net::TcpStream) -> Option<TcpProbe> {
        Some(TcpProbe {
            local: s.local_addr().ok()?,
            peer: s.peer_addr().ok()?,
        })
    }

    /// The kernel's smoothed RTT of the connection, `None` when it has gone (or on a system
    /// without socket diagnostics).
    pub(crate) fn rtt(&self) -> Option<Duration> {
        #[cfg(target_os = "linux")]
        {
            diag::rtt_us(self.local, self.peer).map(|us| Duration::from_micros(u64::from(us)))
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

#[cfg(target_os = "linux")]
mod diag {
    use rustix::net::{
        AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, sendto,
        socket_with,
    };
    use std::net::SocketAddr;

    // linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
    const NLMSG_HDR: usize = 16;
    pub(super) const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const REQ_LEN: usize = 56; // struct inet_diag_req_v2
    const MSG_LEN: usize = 72; // struct inet_diag_msg
    const INET_DIAG_INFO: u16 = 2;
    const IPPROTO_TCP: u8 = 6;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    /// Offset of `tcpi_rtt` (µs) in `struct tcp_info`: 8 bytes of `u8` fields, then `u32`s
    /// (rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets, last_data_sent,
    /// last_ack_sent, last_data_recv, last_ack_recv, pmtu, rcv_ssthresh, rtt).
    const TCPI_RTT: usize = 68;

    /// The `SOCK_DIAG_BY_FAMILY` request for the one TCP socket `local` ↔ `peer`, asking for
    /// its `tcp_info`.
    pub(super) fn request(local: SocketAddr, peer: SocketAddr) -> [u8; NLMSG_HDR + REQ_LEN] {
        let mut b = [0u8; NLMSG_HDR + REQ_LEN];
        b[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
        b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
        let r = &mut b[NLMSG_HDR..];
        r[0] = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        r[1] = IPPROTO_TCP;
        r[2] = 1 << (INET_DIAG_INFO - 1); // the extensions wanted: INET_DIAG_INFO
        r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
        // struct inet_diag_sockid: ports and addresses in network order.
        r[8..10].copy_from_slice(&local.port().to_be_bytes());
        r[10..12].copy_from_slice(&peer.port().to_be_bytes());
        let addr = |a: SocketAddr, out: &mut [u8]| match a {
            SocketAddr::V4(v) => out[..4].copy_from_slice(&v.ip().octets()),
            SocketAddr::V6(v) => out[..16].copy_from_slice(&v.ip().octets()),
        };
        addr(local, &mut r[12..28]);
        addr(peer, &mut r[28..44]);
        // r[44..48]: interface 0; the cookie: INET_DIAG_NOCOOKIE (any).
        r[48..56].copy_from_slice(&[0xff; 8]);
        b
    }

    /// `tcpi_rtt` from the kernel's answer, `None` for an error answer (no such socket) or
    /// anything malformed.
    pub(super) fn parse(answer: &[u8]) -> Option<u32> {
        let u16_at =
            |b: &[u8], i: usize| Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?));
        let u32_at =
            |b: &[u8], i: usize| Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?));
        let len = usize::try_from(u32_at(answer, 0)?).ok()?;
        let msg = answer.get(..len)?;
        match u16_at(msg, 4)? {
            SOCK_DIAG_BY_FAMILY => {}
            // ENOENT: no such connection (it has gone).
            NLMSG_ERROR => return None,
            _ => return None,
        }
        let mut attrs = msg.get(NLMSG_HDR + MSG_LEN..)?;
        while attrs.len() >= 4 {
            let alen = usize::from(u16_at(attrs, 0)?);
            let kind = u16_at(attrs, 2)?;
            if alen < 4 {
                return None;
            }
            let payload = attrs.get(4..alen)?;
            if kind == INET_DIAG_INFO {
                return u32_at(payload, TCPI_RTT);
            }
            attrs = attrs.get(alen.next_multiple_of(4).min(attrs.len())..)?;
        }
        None
    }

    pub(super) fn rtt_us(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .ok()?;
        let kernel = netlink::SocketAddrNetlink::new(0, 0);
        sendto(&fd, &request(local, peer), SendFlags::empty(), &kernel).ok()?;
        // The kernel answers a lookup while handling the request: the answer is queued when
        // `sendto` returns, so this never waits.
        let mut buf = [0u8; 2048];
        let (n, _) = recv(&fd, &mut buf[..], RecvFlags::DONTWAIT).ok()?;
        parse(buf.get(..n)?)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use super::*;

    #[tokio::test]
    async fn a_connected_socket_has_an_rtt_and_an_unknown_one_none() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = tokio::net::TcpListener::bind(host).await else {
                continue; // no IPv6 on this machine
            };
            let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let (s, _) = l.accept().await.unwrap();
            let (pc, ps) = (TcpProbe::of(&c).unwrap(), TcpProbe::of(&s).unwrap());
            let rtt = pc.rtt().expect("the kernel knows the connection");
            assert!(
                rtt > Duration::ZERO && rtt < Duration::from_secs(1),
                "{rtt:?}"
            );
            assert!(ps.rtt().is_some_and(|r| r > Duration::ZERO));
            // A connection the kernel does not have: no figure.
            let gone = TcpProbe {
                local: pc.local,
                peer: SocketAddr::new(pc.peer.ip(), 1),
            };
            assert_eq!(gone.rtt(), None);
        }
        // A dual-stack listener's IPv4 peer: IPv4-mapped IPv6 addresses on the accepted side.
        if let Ok(l) = tokio::net::TcpListener::bind("[::]:0").await {
            let port = l.local_addr().unwrap().port();
            let c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (s, _) = l.accept().await.unwrap();
            let ps = TcpProbe::of(&s).unwrap();
            assert!(ps.peer.is_ipv6(), "{ps:?}");
            assert!(ps.rtt().is_some_and(|r| r > Duration::ZERO), "{ps:?}");
            assert!(TcpProbe::of(&c).unwrap().rtt().is_some());
        }
    }

    #[test]
    fn answers_are_parsed_without_trusting_them() {
        // An error answer (ENOENT), a truncated answer, garbage: none.
        let mut err = [0u8; 36];
        err[0..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&diag::NLMSG_ERROR.to_ne_bytes());
        assert_eq!(diag::parse(&err), None);
        assert_eq!(diag::parse(&[]), None);
        assert_eq!(diag::parse(&[0xff; 3]), None);
        // A well-formed answer with a tcp_info attribute whose rtt is 1234 µs.
        let mut ok = vec![0u8; 16 + 72];
        ok[4..6].copy_from_slice(&20u16.to_ne_bytes());
        let mut info = vec![0u8; 4 + 104];
        info[0..2].copy_from_slice(&108u16.to_ne_bytes());
        info[2..4].copy_from_slice(&2u16.to_ne_bytes());
        info[4 + 68..4 + 72].copy_from_slice(&1234u32.to_ne_bytes());
        // Another attribute before it, of an odd length (padded).
        ok.extend_from_slice(&[5, 0, 8, 0, 1, 0, 0, 0]);
        ok.extend_from_slice(&info);
        let n = ok.len() as u32;
        ok[0..4].copy_from_slice(&n.to_ne_bytes());
        assert_eq!(diag::parse(&ok), Some(1234));
        // The same with a length field that lies: none, no panic.
        ok[0..4].copy_from_slice(&(n + 100).to_ne_bytes());
        assert_eq!(diag::parse(&ok), None);
        let mut bad = ok.clone();
        bad[0..4].copy_from_slice(&n.to_ne_bytes());
        bad[16 + 72..16 + 74].copy_from_slice(&2u16.to_ne_bytes()); // attr shorter than header
        assert_eq!(diag::parse(&bad), None);
    }
}
