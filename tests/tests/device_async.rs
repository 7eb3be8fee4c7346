//! The device node's `embassy` feature: `hypha_nostd::io_async::Driver` runs the sans-IO node
//! over an in-memory embedded-io-async byte stream whose far end is hypha-core's std session
//! (the one every std node runs per link), on a fake clock: handshake, puts, a sample from the
//! std side, keep-alives over simulated time, and the line's end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_core::framing::{self, Deframer};
use hypha_core::session::{self, HeapSession, Role};
use hypha_core::wire::{self, NetworkMessage, Priority, Push, RawBytes, WireKey};
use hypha_nostd::io_async::{Clock, DriveError, Driver};
use hypha_nostd::{Config, Duration, Event, Instant, Node, SampleKind};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A fake clock: sleeping jumps to the deadline.
#[derive(Clone, Default)]
struct FakeClock(Rc<Cell<u64>>);

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.get())
    }
    async fn sleep_until(&self, deadline: Instant) {
        self.0.set(self.0.get().max(deadline.as_micros()));
    }
}

/// The line: what the device writes goes to a std session; what the session sends comes back
/// on read (pending while there is none, unless the line has ended).
struct StdLine {
    s: HeapSession,
    de: Deframer<Vec<u8>>,
    clock: FakeClock,
    to_device: VecDeque<u8>,
    puts: Vec<Vec<u8>>,
    established: bool,
    closed: bool,
    ended: bool,
}

impl StdLine {
    fn new(clock: FakeClock) -> Self {
        let mut cfg = session::Config::new(hypha_core::id::NodeId::from_u128(0xABC));
        cfg.mode = wire::Mode::Router;
        cfg.lease = Duration::from_secs(3);
        StdLine {
            s: HeapSession::new(cfg, Role::Listener, clock.now(), 42),
            de: Deframer::new(vec![0u8; framing::deframer_len(65_535)]),
            clock,
            to_device: VecDeque::new(),
            puts: Vec::new(),
            established: false,
            closed: false,
            ended: false,
        }
    }

    fn events(&mut self) {
        while let Some(e) = self.s.poll_event() {
            match e {
                session::Event::Established { .. } => self.established = true,
                session::Event::Closed { .. } => self.closed = true,
            }
        }
    }
}

impl embedded_io_async::ErrorType for StdLine {
    type Error = embedded_io_async::ErrorKind;
}

impl embedded_io_async::Write for StdLine {
    async fn write(&mut self, mut bytes: &[u8]) -> Result<usize, Self::Error> {
        let (n, now) = (bytes.len(), self.clock.now());
        self.s.handle_timeout(now);
        while !bytes.is_empty() {
            let (used, frame) = self.de.push(bytes);
            bytes = &bytes[used..];
            if let Some(len) = frame {
                let puts = &mut self.puts;
                self.s.handle_input(now, self.de.frame(len), &mut |r| {
                    if let NetworkMessage::Put(p) = r.msg {
                        puts.push(p.payload.to_vec());
                    }
                });
            }
        }
        self.events();
        Ok(n)
    }
}

impl embedded_io_async::Read for StdLine {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let now = self.clock.now();
        self.s.handle_timeout(now);
        let mut batch = vec![0u8; 65_535];
        while let Some(n) = self.s.poll_transmit(now, &mut batch) {
            let mut f = vec![0u8; framing::encoded_len(n)];
            let m = framing::encode(&batch[..n], &mut f).unwrap();
            self.to_device.extend(&f[..m]);
        }
        self.events();
        if self.to_device.is_empty() {
            if self.ended {
                return Ok(0);
            }
            std::future::poll_fn(|_| Poll::<()>::Pending).await;
        }
        let n = buf.len().min(self.to_device.len());
        for (slot, b) in buf.iter_mut().zip(self.to_device.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }
}

/// Polls `f` to completion on this thread (the fake line and clock never need a wake-up).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the driver stalled");
}

#[test]
fn the_async_driver_runs_the_device_node_against_a_std_session() {
    let clock = FakeClock::default();
    let line = StdLine::new(clock.clone());
    let mut rx = vec![0u8; hypha_nostd::rx_buffer_len(256)];
    let mut tx = vec![0u8; hypha_nostd::tx_buffer_len(256)];
    let mut node: Node<'_, 4, 2, 2, 4> = Node::new(
        Config::new(hypha_core::id::NodeId::from_u128(0xD0)),
        &mut rx,
        &mut tx,
    );
    let temp = node.declare_publisher("device/temp").unwrap();
    node.declare_subscriber("ctl/**").unwrap();
    // A small read buffer: frames arrive over several reads.
    let mut buf = [0u8; 16];
    let mut d = Driver::new(line, clock.clone(), &mut buf);
    let mut samples = Vec::new();
    let mut connected = 0;
    block_on(async {
        let mut step = async |d: &mut Driver<'_, StdLine, FakeClock>,
                              node: &mut Node<'_, 4, 2, 2, 4>| {
            let r = d.step(node).await;
            while let Some(ev) = node.poll_event() {
                match ev {
                    Event::Connected => connected += 1,
                    Event::Sample { key, payload, .. } => {
                        samples.push(format!("{key}={}", std::str::from_utf8(payload).unwrap()))
                    }
                    _ => {}
                }
            }
            r
        };
        for _ in 0..50 {
            step(&mut d, &mut node).await.unwrap();
            if node.is_connected() && d.io_mut().established {
                break;
            }
        }
        assert!(node.is_connected() && d.io_mut().established, "handshake");
        for i in 0..3u8 {
            node.put(temp, &[b'a' + i]).unwrap();
            step(&mut d, &mut node).await.unwrap();
        }
        assert_eq!(
            d.io_mut().puts,
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        d.io_mut()
            .s
            .send(
                Priority::Data,
                true,
                &NetworkMessage::Push(Push {
                    key: WireKey::Name("ctl/led"),
                    kind: SampleKind::Put,
                    payload: RawBytes(b"on"),
                    timestamp: None,
                    encoding: None,
                    attachment: None,
                }),
            )
            .unwrap();
        for _ in 0..20 {
            step(&mut d, &mut node).await.unwrap();
        }
        // 20 s of simulated time: keep-alives both ways hold both leases.
        let t0 = clock.now();
        while clock.now().saturating_since(t0) < Duration::from_secs(20) {
            step(&mut d, &mut node).await.unwrap();
        }
        assert!(
            node.is_connected() && !d.io_mut().closed,
            "leases held: {:?} {:?} {}",
            node.stats(),
            clock.now(),
            d.io_mut().closed
        );
        assert!(node.stats().tx_keepalives >= 20, "{:?}", node.stats());
        assert!(
            node.stats().rx_batches >= 20,
            "the std side's: {:?}",
            node.stats()
        );
        d.io_mut().ended = true;
        let mut end = Ok(());
        for _ in 0..10 {
            end = step(&mut d, &mut node).await;
            if end.is_err() {
                break;
            }
        }
        assert_eq!(end, Err(DriveError::Closed));
    });
    assert_eq!(samples, ["ctl/led=on"]);
    assert_eq!(connected, 1);
    assert_eq!(node.framing().errors(), 0);
}
