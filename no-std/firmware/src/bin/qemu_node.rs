//! The QEMU interop firmware (netduinoplus2): a device node on USART1, attached to a std
//! `hypha router` through QEMU's UART socket (`serial+tcp/`).
//!
//! - declares `device/temp` (publisher), `ctl/**` (subscriber), `device/info` (queryable),
//!   `device/alive` (liveliness token), and gets `host/**` once per session;
//! - on `ctl/start`, publishes `sample-0` … `sample-9` on `device/temp`, 10 ms apart, once;
//! - answers `get device/info` with its version and measured footprint;
//! - on `ctl/exit` = N, prints its counters through semihosting and exits with status N.
//!
//! A panic or a fault exits with status 101 or 1.
#![no_std]
#![no_main]

use hypha_core::id::NodeId;
use hypha_nostd::{Config, Event, Node, QueryId, rx_buffer_len, tx_buffer_len};
use hypha_nostd_firmware::{self as board, Line};

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
    let mut cfg = Config::new(NodeId::from_u128(0x00D0_0000_0000_0000_0000_0000_0000_0001));
    cfg.mtu = MTU as u16;
    let mut node: Node<'_, 4, 2, 2, 4> = Node::new(cfg, &mut rx, &mut tx);
    let code = run(&mut uart, &mut node);
    let f = *node.framing();
    let s = *node.stats();
    let mut line = Line::new();
    line.text(b"hypha-nostd exit")
        .field(b"code", code)
        .field(b"crc_errors", f.crc_errors)
        .field(b"cobs_errors", f.cobs_errors)
        .field(b"overflows", f.overflows)
        .field(b"frames", f.frames)
        .field(b"connects", s.connects)
        .field(b"hwm", board::stack_high_water())
        .field(b"static", board::static_ram())
        .field(b"flash", board::flash_used())
        .text(b"\n");
    board::write(line.as_bytes());
    board::exit(code)
}

/// Runs until told to exit; returns the exit status asked for.
fn run(uart: &mut board::Uart, node: &mut Node<'_, 4, 2, 2, 4>) -> u32 {
    let Ok(temp) = node.declare_publisher("device/temp") else {
        return 3;
    };
    if node.declare_subscriber("ctl/**").is_err()
        || node.declare_queryable("device/info").is_err()
        || node.declare_token("device/alive").is_err()
    {
        return 3;
    }
    let mut input = [0u8; 64];
    let (mut pos, mut len) = (0usize, 0usize);
    let mut started = false;
    let mut published = 0u32;
    let mut next_pub = 0u32;
    let mut asked = false;
    let mut query: Option<(QueryId, bool)> = None;
    let mut exit_code: Option<u32> = None;
    let (mut replies, mut ends) = (0u32, 0u32);
    loop {
        let now = board::now();
        if pos == len {
            len = uart.read(&mut input);
            pos = 0;
        }
        if pos < len {
            pos += node.handle_rx(now, input.get(pos..len).unwrap_or(&[]));
        }
        while let Some(ev) = node.poll_event() {
            match ev {
                Event::Connected | Event::Disconnected { .. } => asked = false,
                Event::Sample { key, payload, .. } => match key {
                    "ctl/exit" => exit_code = Some(parse(payload)),
                    "ctl/start" => started = true,
                    _ => {}
                },
                Event::Query { id, .. } => query = Some((id, false)),
                Event::Reply { .. } | Event::ReplyErr { .. } => replies += 1,
                Event::ReplyEnd { .. } => ends += 1,
            }
        }
        if node.is_connected() {
            if !asked && node.get(now, "host/**", "", 1000).is_ok() {
                asked = true;
            }
            if let Some((q, replied)) = query {
                if !replied {
                    let mut line = Line::new();
                    line.text(b"hypha-nostd 0.1.0")
                        .field(b"hwm", board::stack_high_water())
                        .field(b"static", board::static_ram())
                        .field(b"flash", board::flash_used())
                        .field(b"get_replies", replies)
                        .field(b"get_ends", ends);
                    if node.reply(q, "device/info", line.as_bytes()).is_ok() {
                        query = Some((q, true));
                    }
                } else if node.reply_final(q).is_ok() {
                    query = None;
                }
            }
            let ms = board::millis();
            if started && published < 10 && ms >= next_pub {
                let mut d = [0u8; 10];
                let mut p = [0u8; 17];
                p[..7].copy_from_slice(b"sample-");
                let digits = board::decimal(published, &mut d);
                let n = 7 + digits.len();
                p[7..n].copy_from_slice(digits);
                if node.put(temp, &p[..n]).is_ok() {
                    published += 1;
                    next_pub = ms + 10;
                }
            }
        }
        while let Some(bytes) = node.poll_transmit(now) {
            uart.write(bytes);
        }
        if let Some(code) = exit_code {
            return code;
        }
    }
}

/// A decimal exit status from a payload ("0", "42"); anything else is 255.
fn parse(p: &[u8]) -> u32 {
    if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
        return 255;
    }
    p.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
}
