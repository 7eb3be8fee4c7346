//! QUIC congestion control: quinn's Cubic with a floor under its window.
//!
//! Why (issue 10, measured with `examples/compare/backbone_wan.sh`): Hypha's links mostly carry
//! application-limited traffic (telemetry at a steady rate, well under the path's capacity).
//! Cubic does not grow its window while the sender is application-limited, yet it multiplies the
//! window by 0.7 at every loss, down to two packets. On a WAN link with random loss (0.5 % at
//! 1 kHz is five losses a second) the window therefore ratchets down to about the demand itself,
//! and from then on samples queue behind the window and the pacer: a few milliseconds on the
//! median at a 40 ms round trip, and on a 120 ms round trip the median sample waited ~110–200 ms
//! for 60 ms of link delay. Random loss says nothing about congestion there, and a flow that
//! keeps its demand in flight takes nothing from anyone.
//!
//! The floor keeps `MIN_WINDOW` bytes sendable whatever the loss: Cubic still governs every
//! window above it (a bulk transfer backs off as before), and below it a Hypha link never has
//! more than `MIN_WINDOW` bytes in flight. The floor also holds from the first packet, so a
//! new connection may send `MIN_WINDOW` before its first acknowledgement: ~4× the initial window
//! RFC 9002 recommends (14,720 B), a price paid once per link between peers that chose each
//! other, not per request as on the web.
//! quinn's BBR was also measured and gave the same medians, but quinn marks it experimental and
//! its own users report it broken, so it is not used.

use quinn::congestion::{Controller, ControllerFactory, CubicConfig};
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

/// The window below which loss does not shrink a link's congestion window (bytes). 16 KiB was
/// not enough on a 120 ms round trip at 2,000 samples/s; 32 and 64 KiB both were (the
/// measurement is in BENCHMARKS.md, "Congestion control on lossy WAN links").
pub(crate) const MIN_WINDOW: u64 = 64 << 10;

/// Builds a [`FlooredCubic`] per connection.
pub(crate) struct FlooredCubicConfig {
    cubic: Arc<CubicConfig>,
    floor: u64,
}

impl FlooredCubicConfig {
    pub(crate) fn new(floor: u64) -> Self {
        Self {
            cubic: Arc::new(CubicConfig::default()),
            floor,
        }
    }
}

impl ControllerFactory for FlooredCubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(FlooredCubic {
            inner: self.cubic.clone().build(now, current_mtu),
            floor: self.floor,
        })
    }
}

/// Cubic, whose window never reads below `floor`.
struct FlooredCubic {
    inner: Box<dyn Controller>,
    floor: u64,
}

impl Controller for FlooredCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor)
    }

    fn metrics(&self) -> quinn::congestion::ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(FlooredCubic {
            inner: self.inner.clone_box(),
            floor: self.floor,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(floor: u64) -> (Box<dyn Controller>, Box<dyn Controller>, Instant) {
        let now = Instant::now();
        let cubic = Arc::new(CubicConfig::default()).build(now, 1200);
        let floored = Arc::new(FlooredCubicConfig::new(floor)).build(now, 1200);
        (cubic, floored, now)
    }

    /// Losses spread over time (each a new congestion event, sent after the last recovery
    /// began) shrink Cubic to its minimum; the floored window stops at the floor.
    #[test]
    fn random_loss_does_not_shrink_the_window_below_the_floor() {
        let (mut cubic, mut floored, t0) = pair(MIN_WINDOW);
        for i in 1..=40u64 {
            let now = t0 + Duration::from_millis(200 * i);
            let sent = now - Duration::from_millis(50);
            cubic.on_congestion_event(now, sent, false, 1200);
            floored.on_congestion_event(now, sent, false, 1200);
        }
        assert_eq!(cubic.window(), 2 * 1200, "Cubic falls to two packets");
        assert_eq!(floored.window(), MIN_WINDOW);
        assert_eq!(floored.metrics().congestion_window, MIN_WINDOW);
        // Persistent congestion (every packet of a whole period lost) is no different.
        floored.on_congestion_event(t0 + Duration::from_secs(60), t0, true, 1 << 20);
        assert_eq!(floored.window(), MIN_WINDOW);
    }

    /// Above the floor Cubic governs: the initial window and a loss's cut are Cubic's.
    #[test]
    fn above_the_floor_the_window_is_cubics() {
        let floor = 8 << 10;
        let (mut cubic, mut floored, t0) = pair(floor);
        let w = cubic.initial_window();
        assert!(w > floor, "Cubic starts at {w}");
        assert_eq!(floored.window(), w);
        let now = t0 + Duration::from_secs(1);
        cubic.on_congestion_event(now, t0, false, 1200);
        floored.on_congestion_event(now, t0, false, 1200);
        assert!(cubic.window() > floor && cubic.window() < w);
        assert_eq!(
            floored.window(),
            cubic.window(),
            "a loss above the floor cuts as Cubic"
        );
        let copy = floored.clone_box();
        assert_eq!(copy.window(), floored.window());
    }
}
