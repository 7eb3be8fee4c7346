//! The state of a `ping --chain` run: each echo's callback times its round trip and sends the
//! next ping. Shared by Hypha's `ping` example and the comparison's `zbench ping --chain`
//! (`#[path]`), so both systems run the same chain; only the subscribe and put calls differ.
//! Pings carry their sequence number in their first 8 bytes (little endian).

use std::time::Instant;

/// Called once with the measured round trips (µs), or why the chain stopped.
pub type Done = Box<dyn FnOnce(Result<Vec<f64>, String>) + Send>;

/// One chain of `warmup + n` round trips, one ping in flight at a time.
pub struct Chain {
    /// The sequence number of the ping in flight.
    next: u64,
    total: u64,
    warmup: u64,
    size: usize,
    sent: Instant,
    rtts: Vec<f64>,
    done: Option<Done>,
}

impl Chain {
    /// A chain of `warmup` unmeasured round trips, then `n` measured ones, with pings of `size`
    /// bytes (at least 8).
    pub fn new(warmup: usize, n: usize, size: usize, done: Done) -> Chain {
        Chain {
            next: 0,
            total: (warmup + n) as u64,
            warmup: warmup as u64,
            size: size.max(8),
            sent: Instant::now(),
            rtts: Vec::with_capacity(n),
            done: Some(done),
        }
    }

    /// The first ping (sent again until [`started`](Self::started): the far side may learn of
    /// the echo's subscriber a little after it is declared). Its send time starts now.
    pub fn first(&mut self) -> Vec<u8> {
        self.sent = Instant::now();
        self.ping(0)
    }

    fn ping(&self, seq: u64) -> Vec<u8> {
        let mut p = vec![0xabu8; self.size];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        p
    }

    /// An echo arrived at `now`: the next ping to send (its send time starts now), or `None`
    /// when there is nothing to send (a stray or repeated echo, or the chain is over).
    pub fn on_echo(&mut self, payload: &[u8], now: Instant) -> Option<Vec<u8>> {
        let seq = payload
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        // A retried first ping's second echo, or a stray one: not the ping in flight.
        if seq != Some(self.next) || self.done.is_none() {
            return None;
        }
        if self.next >= self.warmup {
            self.rtts
                .push(now.duration_since(self.sent).as_secs_f64() * 1e6);
        }
        self.next += 1;
        if self.next == self.total {
            let rtts = std::mem::take(&mut self.rtts);
            if let Some(d) = self.done.take() {
                d(Ok(rtts));
            }
            return None;
        }
        let p = self.ping(self.next);
        self.sent = Instant::now();
        Some(p)
    }

    /// The ping just handed out could not be sent: the chain stops with `error`.
    pub fn fail(&mut self, error: String) {
        if let Some(d) = self.done.take() {
            d(Err(format!("ping {}: {error}", self.next)));
        }
    }

    /// True once the first echo came back.
    pub fn started(&self) -> bool {
        self.next > 0
    }

    /// The sequence number of the ping in flight (to tell a stalled chain from a slow one).
    pub fn at(&self) -> u64 {
        self.next
    }
}

/// The chain behind its mutex (a callback that panicked leaves it usable).
pub fn lock(st: &std::sync::Mutex<Chain>) -> std::sync::MutexGuard<'_, Chain> {
    st.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_measures_n_after_warmup_and_ignores_stray_echoes() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = Chain::new(2, 3, 4, Box::new(move |r| tx.send(r).unwrap_or(())));
        let p0 = c.first();
        assert_eq!(p0.len(), 8);
        let t = Instant::now();
        let p1 = c.on_echo(&p0, t).expect("ping 1");
        // The retried first ping's second echo changes nothing.
        assert!(c.on_echo(&p0, t).is_none());
        assert!(c.started() && c.at() == 1);
        let mut p = p1;
        for _ in 0..3 {
            p = c.on_echo(&p, Instant::now()).expect("next ping");
        }
        assert!(rx.try_recv().is_err(), "done before the last echo");
        assert!(c.on_echo(&p, Instant::now()).is_none());
        assert_eq!(rx.try_recv().expect("done").expect("rtts").len(), 3);
        assert!(c.on_echo(&p, Instant::now()).is_none(), "after the end");
    }
}
