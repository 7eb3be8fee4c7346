//! Hybrid logical clock (HLC) timestamps.
//!
//! A [`Timestamp`] is an NTP64 time (upper 32 bits: seconds since the UNIX epoch, lower 32 bits:
//! fraction of a second) plus the [`NodeId`] of the node that made it, so that two timestamps are
//! never equal unless they are the same event. An [`Hlc`] issues strictly increasing timestamps
//! even when the physical clock stalls or jumps back, and folds in timestamps received from
//! peers, refusing those too far in the future. The physical time is an argument: hypha-core
//! never reads a clock.

use crate::id::NodeId;
use core::fmt;
use serde::{Deserialize, Serialize};

/// An NTP64 time: seconds since the UNIX epoch in the upper 32 bits, fraction in the lower 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Ntp64(pub u64);

impl Ntp64 {
    /// Converts microseconds since the UNIX epoch (saturating after the year 2106, NTP64's
    /// limit).
    pub const fn from_unix_micros(micros: u64) -> Self {
        let secs = micros / 1_000_000;
        if secs > u32::MAX as u64 {
            return Ntp64(u64::MAX);
        }
        let frac_us = micros % 1_000_000;
        // frac = frac_us / 1e6 * 2^32
        let frac = (frac_us << 32) / 1_000_000;
        Ntp64((secs << 32) | frac)
    }

    /// Microseconds since the UNIX epoch (rounded down).
    pub const fn as_unix_micros(self) -> u64 {
        let secs = self.0 >> 32;
        let frac = self.0 & 0xffff_ffff;
        secs * 1_000_000 + ((frac * 1_000_000) >> 32)
    }
}

impl fmt::Debug for Ntp64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.as_unix_micros();
        write!(f, "{}.{:06}", us / 1_000_000, us % 1_000_000)
    }
}

/// A unique, totally ordered timestamp: time first, then node id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct Timestamp {
    /// The (hybrid) time.
    pub time: Ntp64,
    /// The node that issued it.
    pub id: NodeId,
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{}", self.time, self.id)
    }
}

/// Why a remote timestamp was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HlcError {
    /// The timestamp is further in the future than the configured maximum drift (µs given).
    TooFarInFuture {
        /// How far ahead of local physical time, in microseconds.
        ahead_us: u64,
    },
}

impl fmt::Display for HlcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HlcError::TooFarInFuture { ahead_us } => {
                write!(f, "timestamp is {ahead_us} µs ahead of the local clock")
            }
        }
    }
}

impl core::error::Error for HlcError {}

/// Number of low bits of the NTP64 fraction used as a logical counter.
const COUNTER_BITS: u32 = 4;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// A hybrid logical clock.
#[derive(Clone, Debug)]
pub struct Hlc {
    id: NodeId,
    last: Ntp64,
    max_drift: Ntp64,
}

impl Hlc {
    /// A clock for node `id` accepting remote timestamps at most `max_drift_us` ahead.
    pub const fn new(id: NodeId, max_drift_us: u64) -> Self {
        Hlc {
            id,
            last: Ntp64(0),
            max_drift: Ntp64::from_unix_micros(max_drift_us),
        }
    }

    /// The node id stamped on issued timestamps.
    pub const fn id(&self) -> NodeId {
        self.id
    }

    /// Issues a new timestamp, strictly greater than every one issued or observed before.
    pub fn new_timestamp(&mut self, physical: Ntp64) -> Timestamp {
        let phys = Ntp64(physical.0 & !COUNTER_MASK);
        self.last = if phys.0 > self.last.0 {
            phys
        } else {
            Ntp64(self.last.0.saturating_add(1))
        };
        Timestamp {
            time: self.last,
            id: self.id,
        }
    }

    /// Folds a remote timestamp into the clock. Refuses it if it is more than the maximum drift
    /// ahead of `physical`.
    pub fn update_with(&mut self, physical: Ntp64, ts: &Timestamp) -> Result<(), HlcError> {
        if ts.time.0 > physical.0.saturating_add(self.max_drift.0) {
            let ahead = Ntp64(ts.time.0 - physical.0).as_unix_micros();
            return Err(HlcError::TooFarInFuture { ahead_us: ahead });
        }
        if ts.time > self.last {
            self.last = ts.time;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp64_roundtrip_micros() {
        for us in [0u64, 1, 999_999, 1_000_000, 1_700_000_000_123_456] {
            let back = Ntp64::from_unix_micros(us).as_unix_micros();
            assert!(us.abs_diff(back) <= 1, "{us} -> {back}");
        }
    }

    #[test]
    fn monotonic_even_when_clock_stalls_or_goes_back() {
        let mut hlc = Hlc::new(NodeId::from_u128(1), 500_000);
        let t0 = Ntp64::from_unix_micros(1_000_000_000);
        let a = hlc.new_timestamp(t0);
        let b = hlc.new_timestamp(t0);
        let c = hlc.new_timestamp(Ntp64::from_unix_micros(999_000_000));
        assert!(a < b && b < c);
    }

    #[test]
    fn remote_timestamps_advance_the_clock_and_far_future_is_refused() {
        let mut hlc = Hlc::new(NodeId::from_u128(1), 500_000);
        let now = Ntp64::from_unix_micros(1_000_000_000);
        let remote = Timestamp {
            time: Ntp64::from_unix_micros(1_000_100_000),
            id: NodeId::from_u128(2),
        };
        hlc.update_with(now, &remote).unwrap();
        assert!(hlc.new_timestamp(now).time > remote.time);
        let far = Timestamp {
            time: Ntp64::from_unix_micros(1_002_000_000),
            id: remote.id,
        };
        assert!(matches!(
            hlc.update_with(now, &far),
            Err(HlcError::TooFarInFuture { .. })
        ));
    }
}
