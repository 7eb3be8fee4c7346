//! The `embassy` feature: the sans-IO [`Node`] driven over an async byte stream, any
//! [`embedded_io_async::Read`] + [`Write`] (an embassy UART, an embassy-net TCP socket, a USB
//! CDC class), executor-agnostic: time comes from a [`Clock`] the caller implements.
//!
//! [`Driver::step`] does one round: feeds buffered input to [`Node::handle_rx`], writes every
//! batch [`Node::poll_transmit`] has, then waits for input or [`Node::poll_timeout`],
//! whichever comes first. Between steps the application drains [`Node::poll_event`] and calls
//! the verbs, exactly as with the sans-IO node:
//!
//! ```ignore
//! let mut driver = Driver::new(uart, EmbassyClock, &mut line_buf);
//! loop {
//!     driver.step(&mut node).await?;
//!     while let Some(ev) = node.poll_event() { /* … */ }
//!     let _ = node.put(temp, b"21.5");
//! }
//! ```
//!
//! With embassy-time, the clock is four lines:
//!
//! ```ignore
//! struct EmbassyClock;
//! impl hypha_nostd::io_async::Clock for EmbassyClock {
//!     fn now(&self) -> hypha_nostd::Instant {
//!         hypha_nostd::Instant::from_micros(embassy_time::Instant::now().as_micros())
//!     }
//!     async fn sleep_until(&self, t: hypha_nostd::Instant) {
//!         embassy_time::Timer::at(embassy_time::Instant::from_micros(t.as_micros())).await
//!     }
//! }
//! ```
//!
//! The reader's `read` is dropped when the timeout wins, so it must be cancel-safe (lose no
//! bytes when dropped before completing), as embedded-io-async asks of implementations.

use crate::{Instant, Node};
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;
use embedded_io_async::{Read, Write};

/// The node's time source.
pub trait Clock {
    /// The current time (microseconds from any monotonic counter).
    fn now(&self) -> Instant;
    /// Completes at `deadline` or later (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;
}

/// Why [`Driver::step`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum DriveError<E> {
    /// The reader or writer failed.
    Io(E),
    /// The reader reached its end (read 0 bytes): the line is gone.
    Closed,
}

/// Runs a [`Node`] over `IO`, reading into a buffer of the caller's.
pub struct Driver<'d, IO, C> {
    io: IO,
    clock: C,
    buf: &'d mut [u8],
    pos: usize,
    end: usize,
}

impl<'d, IO: Read + Write, C: Clock> Driver<'d, IO, C> {
    /// A driver reading `io` into `buf` (any length from 1; 64 bytes or more is sensible).
    pub fn new(io: IO, clock: C, buf: &'d mut [u8]) -> Self {
        Driver {
            io,
            clock,
            buf,
            pos: 0,
            end: 0,
        }
    }

    /// The byte stream.
    pub fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// One round: feed input already read (if any: then return, so the events it made can be
    /// drained), else write the node's output and wait for input or the node's next timeout;
    /// then feed what arrived and write what the node has to say. Call it in a loop, draining
    /// [`Node::poll_event`] and calling verbs between calls.
    pub async fn step<const S: usize, const Q: usize, const G: usize, const K: usize>(
        &mut self,
        node: &mut Node<'_, S, Q, G, K>,
    ) -> Result<(), DriveError<IO::Error>> {
        if self.pos < self.end {
            self.feed(node);
            return self.send(node).await;
        }
        self.send(node).await?;
        let deadline = node.poll_timeout();
        let got = {
            let mut read = pin!(self.io.read(&mut self.buf[..]));
            let mut sleep = pin!(self.clock.sleep_until(deadline));
            poll_fn(|cx| {
                if let Poll::Ready(r) = read.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        match got {
            Some(Ok(0)) => return Err(DriveError::Closed),
            Some(Ok(n)) => {
                self.pos = 0;
                self.end = n.min(self.buf.len());
                self.feed(node);
            }
            Some(Err(e)) => return Err(DriveError::Io(e)),
            // The timeout: poll_transmit runs the node's timers.
            None => {}
        }
        self.send(node).await
    }

    /// Feeds buffered input until the node stops for events.
    fn feed<const S: usize, const Q: usize, const G: usize, const K: usize>(
        &mut self,
        node: &mut Node<'_, S, Q, G, K>,
    ) {
        let now = self.clock.now();
        let rest = self.buf.get(self.pos..self.end).unwrap_or(&[]);
        self.pos += node.handle_rx(now, rest);
    }

    /// Writes every batch the node has.
    async fn send<const S: usize, const Q: usize, const G: usize, const K: usize>(
        &mut self,
        node: &mut Node<'_, S, Q, G, K>,
    ) -> Result<(), DriveError<IO::Error>> {
        let now = self.clock.now();
        let mut wrote = false;
        while let Some(bytes) = node.poll_transmit(now) {
            self.io.write_all(bytes).await.map_err(DriveError::Io)?;
            wrote = true;
        }
        if wrote {
            self.io.flush().await.map_err(DriveError::Io)?;
        }
        Ok(())
    }
}
