//! Two sans-IO sessions talking over an in-memory "wire": handshake, key declaration, a burst of
//! puts batched into frames, a 1 MiB payload fragmented and reassembled, and an orderly close.
//! No sockets and no sleeps: the clock is a number we advance by hand.
//!
//! Run: `cargo run -p hypha-core --example session_demo`

use hypha_core::id::NodeId;
use hypha_core::session::{Config, Event, HeapSession, Role};
use hypha_core::time::{Duration, Instant};
use hypha_core::wire::{
    CloseReason, NetworkMessage, Priority, Push, Put, RawBytes, SampleKind, WireKey,
};

fn shuttle(
    now: Instant,
    a: &mut HeapSession,
    b: &mut HeapSession,
    buf: &mut [u8],
) -> (usize, usize) {
    let (mut batches, mut msgs) = (0, 0);
    loop {
        let mut moved = false;
        while let Some(n) = a.poll_transmit(now, buf) {
            moved = true;
            batches += 1;
            b.handle_input(now, &buf[..n], &mut |r| {
                msgs += 1;
                if let NetworkMessage::Put(p) = r.msg {
                    if msgs <= 3 {
                        println!(
                            "  b got put on {:?}: {:?}",
                            r.resolve_id(p.key_id).unwrap_or("?"),
                            String::from_utf8_lossy(p.payload)
                        );
                    }
                }
                if let NetworkMessage::Push(p) = r.msg {
                    println!(
                        "  b got push on {:?}: {} bytes",
                        r.resolve(p.key),
                        p.payload.0.len()
                    );
                }
            });
        }
        while let Some(n) = b.poll_transmit(now, buf) {
            moved = true;
            a.handle_input(now, &buf[..n], &mut |_| {});
        }
        for (name, s) in [("a", &mut *a), ("b", &mut *b)] {
            while let Some(e) = s.poll_event() {
                match e {
                    Event::Established { peer, batch_size } => println!(
                        "  {name}: link open with {} ({}), batch size {batch_size}",
                        peer.node_id, peer.mode
                    ),
                    Event::Closed { reason, by_peer } => {
                        println!("  {name}: closed: {reason} (by peer: {by_peer})")
                    }
                }
            }
        }
        if !moved {
            return (batches, msgs);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut now = Instant::ZERO;
    let mut a = HeapSession::new(
        Config::new(NodeId::from_u128(0xa)),
        Role::Dialer,
        now,
        0x1111,
    );
    let mut b = HeapSession::new(
        Config::new(NodeId::from_u128(0xb)),
        Role::Listener,
        now,
        0x2222,
    );
    let mut buf = vec![0u8; 65_535];

    println!("handshake:");
    shuttle(now, &mut a, &mut b, &mut buf);

    println!("1000 puts of 8 bytes on a declared key:");
    let id = a.declare_keyexpr("fleet/car1/speed")?;
    for i in 0..1000u32 {
        let payload = format!("{:>8}", i);
        a.send(
            Priority::Data,
            true,
            &NetworkMessage::Put(Put {
                key_id: id,
                payload: payload.as_bytes(),
            }),
        )?;
    }
    let (batches, msgs) = shuttle(now, &mut a, &mut b, &mut buf);
    println!(
        "  {msgs} messages in {batches} batches ({} bytes on the wire)",
        a.stats().tx_bytes
    );

    println!("a 1 MiB payload:");
    let big = vec![7u8; 1 << 20];
    a.send(
        Priority::Background,
        true,
        &NetworkMessage::Push(Push {
            key: WireKey::Name("fleet/car1/camera"),
            kind: SampleKind::Put,
            payload: RawBytes(&big),
            timestamp: None,
            encoding: Some("image/raw"),
            attachment: None,
        }),
    )?;
    let (batches, _) = shuttle(now, &mut a, &mut b, &mut buf);
    println!(
        "  sent as {batches} fragments, reassembled: {}",
        b.stats().rx_reassembled
    );

    println!("30 s of idle time (keep-alives hold the 10 s lease):");
    let end = now + Duration::from_secs(30);
    while let Some(t) = [a.poll_timeout(), b.poll_timeout()]
        .into_iter()
        .flatten()
        .min()
    {
        if t > end {
            break;
        }
        now = t;
        a.handle_timeout(now);
        b.handle_timeout(now);
        shuttle(now, &mut a, &mut b, &mut buf);
    }
    println!(
        "  keep-alives sent: a {}, b {}; still open: {}",
        a.stats().keepalives_sent,
        b.stats().keepalives_sent,
        a.is_open() && b.is_open()
    );

    println!("orderly close:");
    a.close(CloseReason::Shutdown);
    shuttle(now, &mut a, &mut b, &mut buf);
    Ok(())
}
