//! Per-worker counters, written by one worker and aggregated only when someone reads them.
//!
//! A worker counts into a plain [`Counts`] on its own stack and publishes the totals with
//! relaxed stores once per loop; readers load them whenever they like. No counter is ever
//! shared between two writers, so there is no atomic read-modify-write on the hot path.

use crate::verdict::DropReason;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counter values (cumulative since the worker started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub rx: u64,
    pub rx_bytes: u64,
    pub tx: u64,
    pub tx_bytes: u64,
    /// Packets sent to another worker's handoff ring.
    pub handoff_out: u64,
    /// Packets taken from other workers' handoff rings.
    pub handoff_in: u64,
    /// Loop rounds that moved at least one packet.
    pub busy_rounds: u64,
    /// Times the worker slept because it had nothing to do.
    pub sleeps: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl Counts {
    #[inline]
    pub fn drop(&mut self, reason: DropReason, n: u64) {
        self.drops[reason.index()] += n;
    }

    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Field-wise sum (for totals over workers).
    pub fn add(&mut self, o: &Counts) {
        self.rx += o.rx;
        self.rx_bytes += o.rx_bytes;
        self.tx += o.tx;
        self.tx_bytes += o.tx_bytes;
        self.handoff_out += o.handoff_out;
        self.handoff_in += o.handoff_in;
        self.busy_rounds += o.busy_rounds;
        self.sleeps += o.sleeps;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }

    /// Field-wise difference from an earlier reading (for rates).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut d = *self;
        d.rx -= earlier.rx;
        d.rx_bytes -= earlier.rx_bytes;
        d.tx -= earlier.tx;
        d.tx_bytes -= earlier.tx_bytes;
        d.handoff_out -= earlier.handoff_out;
        d.handoff_in -= earlier.handoff_in;
        d.busy_rounds -= earlier.busy_rounds;
        d.sleeps -= earlier.sleeps;
        for (a, b) in d.drops.iter_mut().zip(earlier.drops) {
            *a -= b;
        }
        d
    }
}

/// The published copy of one worker's [`Counts`].
#[derive(Debug, Default)]
pub struct WorkerCounters {
    rx: AtomicU64,
    rx_bytes: AtomicU64,
    tx: AtomicU64,
    tx_bytes: AtomicU64,
    handoff_out: AtomicU64,
    handoff_in: AtomicU64,
    busy_rounds: AtomicU64,
    sleeps: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl WorkerCounters {
    /// Called by the owning worker only.
    #[inline]
    pub fn publish(&self, c: &Counts) {
        let r = Ordering::Relaxed;
        self.rx.store(c.rx, r);
        self.rx_bytes.store(c.rx_bytes, r);
        self.tx.store(c.tx, r);
        self.tx_bytes.store(c.tx_bytes, r);
        self.handoff_out.store(c.handoff_out, r);
        self.handoff_in.store(c.handoff_in, r);
        self.busy_rounds.store(c.busy_rounds, r);
        self.sleeps.store(c.sleeps, r);
        for (a, &v) in self.drops.iter().zip(&c.drops) {
            a.store(v, r);
        }
    }

    /// A reading; fields are individually current, not a consistent snapshot of one instant.
    pub fn read(&self) -> Counts {
        let r = Ordering::Relaxed;
        let mut drops = [0; DropReason::COUNT];
        for (d, a) in drops.iter_mut().zip(&self.drops) {
            *d = a.load(r);
        }
        Counts {
            rx: self.rx.load(r),
            rx_bytes: self.rx_bytes.load(r),
            tx: self.tx.load(r),
            tx_bytes: self.tx_bytes.load(r),
            handoff_out: self.handoff_out.load(r),
            handoff_in: self.handoff_in.load(r),
            busy_rounds: self.busy_rounds.load(r),
            sleeps: self.sleeps.load(r),
            drops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_read_add_since() {
        let shared = WorkerCounters::default();
        let mut c = Counts {
            rx: 10,
            tx: 7,
            ..Counts::default()
        };
        c.drop(DropReason::NoRoute, 3);
        shared.publish(&c);
        let r = shared.read();
        assert_eq!(r, c);
        let mut total = Counts::default();
        total.add(&r);
        total.add(&r);
        assert_eq!(total.rx, 20);
        assert_eq!(total.drops_of(DropReason::NoRoute), 6);
        assert_eq!(total.since(&r), r);
        assert_eq!(r.dropped(), 3);
    }
}
