//! The QUIC round-trip floor: a bare quinn ping-pong between two processes, none of Hypha's
//! code on the path. 64 B (by default) messages, each with a 2-byte length, on one
//! bidirectional stream; the pong echoes each, the ping times each round trip and prints one
//! JSON line like the `ping` example's: `{"n":…,"size":…,"p50_us":…,"p99_us":…,"p999_us":…,
//! "mean_us":…}`.
//!
//! `--rt` picks where the loop and quinn's drivers run:
//! - `mt`: a multi-thread runtime (2 workers here), the loop in `block_on` on the main thread
//!   and quinn's endpoint and connection drivers on the workers (what `#[tokio::main]` gives);
//! - `mt-task`: the same runtime, the loop spawned as a task on a worker;
//! - `ct`: a current-thread runtime: loop and drivers on one thread;
//! - `io`: the loop in `block_on` of a multi-thread runtime, quinn's drivers on one dedicated
//!   thread of their own (a current-thread runtime);
//! - `inline`: like `mt`, with quinn's drivers run by Hypha's `quic_driver::DriverRuntime` and
//!   each write made in `drive_inline`: the connection's driver sends from the writer's thread.
//!
//! ```text
//! cargo build --release -p hypha-transports --example quic_floor
//! target/release/examples/quic_floor pong --listen 127.0.0.1:7460 --cert /tmp/floor.der --rt ct &
//! target/release/examples/quic_floor ping --connect 127.0.0.1:7460 --cert /tmp/floor.der --rt ct
//! ```
//! The pong writes its self-signed certificate (DER) to `--cert`; the ping trusts only that one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Runs quinn's drivers, timers and socket on one dedicated thread.
#[derive(Debug)]
struct OnThread(tokio::runtime::Handle);

impl OnThread {
    fn start() -> anyhow::Result<Arc<dyn quinn::Runtime>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let h = rt.handle().clone();
        std::thread::Builder::new()
            .name("quic-io".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        Ok(Arc::new(OnThread(h)))
    }
}

impl quinn::Runtime for OnThread {
    fn new_timer(&self, t: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        let _in = self.0.enter();
        quinn::TokioRuntime.new_timer(t)
    }
    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }
    fn wrap_udp_socket(
        &self,
        s: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let _in = self.0.enter();
        quinn::TokioRuntime.wrap_udp_socket(s)
    }
}

/// An endpoint whose drivers run on `io` (else on the caller's runtime).
fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    io: Option<Arc<dyn quinn::Runtime>>,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let rt = io.unwrap_or_else(|| Arc::new(quinn::TokioRuntime));
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        rt,
    )?)
}

/// Writes all of `buf`; with `inline`, each write polls the connection's driver on this thread.
async fn write(tx: &mut quinn::SendStream, buf: &[u8], inline: bool) -> anyhow::Result<()> {
    if !inline {
        return Ok(tx.write_all(buf).await?);
    }
    let mut off = 0;
    std::future::poll_fn(|cx| {
        while off < buf.len() {
            let r = hypha_transports::quic_driver::drive_inline(|| {
                std::pin::Pin::new(&mut *tx).poll_write(cx, &buf[off..])
            });
            match r {
                std::task::Poll::Ready(Ok(n)) => off += n,
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
        std::task::Poll::Ready(Ok(()))
    })
    .await?;
    Ok(())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    Arc::new(t)
}

async fn pong(
    listen: SocketAddr,
    cert_path: String,
    secs: u64,
    io: Option<Arc<dyn quinn::Runtime>>,
) -> anyhow::Result<()> {
    let inline = io
        .as_ref()
        .is_some_and(|r| format!("{r:?}").starts_with("DriverRuntime"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cert = ck.cert.der().clone();
    std::fs::write(&cert_path, cert.as_ref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![b"floor".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport());
    let ep = endpoint(listen, Some(server), io)?;
    let serve = async {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let Ok((mut tx, mut rx)) = conn.accept_bi().await else {
                continue;
            };
            let mut buf = vec![0u8; 65_537 + 2];
            loop {
                let mut len = [0u8; 2];
                if rx.read_exact(&mut len).await.is_err() {
                    break;
                }
                let n = u16::from_le_bytes(len) as usize;
                if rx.read_exact(&mut buf[2..2 + n]).await.is_err() {
                    break;
                }
                buf[..2].copy_from_slice(&len);
                if write(&mut tx, &buf[..n + 2], inline).await.is_err() {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(secs), serve).await;
    Ok(())
}

async fn ping(
    connect: SocketAddr,
    cert_path: String,
    n: usize,
    warmup: usize,
    size: usize,
    io: Option<Arc<dyn quinn::Runtime>>,
) -> anyhow::Result<String> {
    let inline = io
        .as_ref()
        .is_some_and(|r| format!("{r:?}").starts_with("DriverRuntime"));
    // The pong writes its certificate once it listens: wait for it.
    let t0 = Instant::now();
    let der = loop {
        match std::fs::read(&cert_path) {
            Ok(d) if !d.is_empty() => break d,
            _ if t0.elapsed() > Duration::from_secs(30) => anyhow::bail!("no certificate"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"floor".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport());
    let mut ep = endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), None, io)?;
    ep.set_default_client_config(client);
    let conn = ep.connect(connect, "localhost")?.await?;
    let (mut tx, mut rx) = conn.open_bi().await?;
    let size = size.clamp(1, 65_535);
    let mut msg = (size as u16).to_le_bytes().to_vec();
    msg.resize(2 + size, 0xab);
    let mut back = vec![0u8; 2 + size];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        write(&mut tx, &msg, inline).await?;
        rx.read_exact(&mut back).await?;
        if i >= warmup {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    rtts.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok(format!(
        "{{\"n\":{n},\"size\":{size},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"mean_us\":{mean:.1}}}",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    ))
}

fn main() -> anyhow::Result<()> {
    let role = std::env::args().nth(1).unwrap_or_default();
    let rt_kind = arg("--rt").unwrap_or_else(|| "mt".into());
    let cert = arg("--cert").unwrap_or_else(|| "/tmp/quic_floor.der".into());
    let rt = match rt_kind.as_str() {
        "ct" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        "mt" | "mt-task" | "io" | "inline" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        other => anyhow::bail!("--rt mt|mt-task|ct|io|inline, not {other}"),
    };
    let io: Option<Arc<dyn quinn::Runtime>> = match rt_kind.as_str() {
        "io" => Some(OnThread::start()?),
        "inline" => Some({
            let _in = rt.enter();
            hypha_transports::quic_driver::DriverRuntime::current()?
        }),
        _ => None,
    };
    let spawned = rt_kind == "mt-task";
    match role.as_str() {
        "pong" => {
            let listen: SocketAddr = arg("--listen")
                .unwrap_or_else(|| "127.0.0.1:7460".into())
                .parse()?;
            let secs = arg("--secs").and_then(|s| s.parse().ok()).unwrap_or(60);
            let _ = std::fs::remove_file(&cert);
            let f = pong(listen, cert, secs, io);
            if spawned {
                rt.block_on(async { tokio::spawn(f).await? })
            } else {
                rt.block_on(f)
            }
        }
        "ping" => {
            let connect: SocketAddr = arg("--connect")
                .unwrap_or_else(|| "127.0.0.1:7460".into())
                .parse()?;
            let num = |k: &str, d: usize| arg(k).and_then(|s| s.parse().ok()).unwrap_or(d);
            let f = ping(
                connect,
                cert,
                num("--n", 10_000),
                num("--warmup", 1_000),
                num("--size", 64),
                io,
            );
            let line = if spawned {
                rt.block_on(async { tokio::spawn(f).await? })?
            } else {
                rt.block_on(f)?
            };
            println!("{line}");
            Ok(())
        }
        _ => anyhow::bail!("usage: quic_floor ping|pong [--rt mt|mt-task|ct] ..."),
    }
}
