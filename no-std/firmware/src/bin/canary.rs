//! The no-allocation canary: a device node calling every verb, linked with **no global
//! allocator**. If anything in its dependency graph used `alloc` (even an unused `extern crate
//! alloc`), the link would fail with "no global memory allocator found". Linked against the
//! footprint budget (FLASH 16 KiB, RAM 4 KiB) like the interop firmware.
//!
//! Run under QEMU it exercises each verb once (none connected: they are refused, not dropped),
//! feeds arbitrary bytes to the receiver, and exits 0.
#![no_std]
#![no_main]

use core::hint::black_box;
use hypha_core::id::NodeId;
use hypha_nostd::{Config, Node, QueryId, rx_buffer_len, tx_buffer_len};
use hypha_nostd_firmware as board;

const MTU: usize = 256;

#[cortex_m_rt::entry]
fn main() -> ! {
    board::paint_stack();
    let Some(cp) = cortex_m::Peripherals::take() else {
        board::exit(2)
    };
    board::start_clock(cp.SYST);
    let mut uart = board::Uart::new();
    let mut rx = [0u8; rx_buffer_len(MTU)];
    let mut tx = [0u8; tx_buffer_len(MTU)];
    let mut node: Node<'_, 4, 2, 2, 4> = Node::new(
        Config::new(NodeId::from_u128(black_box(0xCA_0A57))),
        &mut rx,
        &mut tx,
    );
    let now = board::now();
    let k = node.declare_publisher(black_box("device/temp"));
    let _ = black_box(node.declare_subscriber(black_box("ctl/**")));
    let _ = black_box(node.declare_queryable(black_box("device/info")));
    let _ = black_box(node.declare_token(black_box("device/alive")));
    if let Ok(k) = k {
        let _ = black_box(node.put(k, black_box(b"21.5")));
    }
    let _ = black_box(node.get(now, black_box("host/**"), "", 1000));
    let _ = black_box(node.reply(QueryId(black_box(1)), "device/info", b"x"));
    let _ = black_box(node.reply_final(QueryId(black_box(1))));
    let junk = black_box([0u8, 3, 0x11, 0x22, 0, 0x05, 0x42, 0x17, 0]);
    let mut fed = 0;
    while fed < junk.len() {
        fed += node.handle_rx(now, &junk[fed..]).max(1);
        while let Some(ev) = node.poll_event() {
            black_box(&ev);
        }
    }
    while let Some(bytes) = node.poll_transmit(now) {
        uart.write(bytes);
        if node.poll_timeout() > now {
            break;
        }
    }
    black_box(node.poll_timeout());
    black_box(node.stats());
    board::exit(0)
}
