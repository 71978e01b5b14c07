//! Live replacement of a worker's logic: the control side publishes a new logic (new routes,
//! a new static map, new filter rules) and every worker picks it up between two batches.
//!
//! The per-batch cost is one atomic load. A worker that sees a new version locks the shared
//! slot once and clones the published logic, so the control side never waits on a worker and
//! a worker never decides one batch with half of an update. Logic state (a bridge's learned
//! MACs) starts over with the new logic.

use super::Logic;
use crate::verdict::{PortId, Verdict};
use crate::wire::Headers;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

struct Shared<L> {
    version: AtomicU64,
    next: Mutex<L>,
}

/// A worker's copy of the current logic.
pub struct Reloadable<L> {
    current: L,
    version: u64,
    shared: Arc<Shared<L>>,
}

/// The control side: publishes new logic to every [`Reloadable`] made from it.
pub struct ReloadHandle<L> {
    shared: Arc<Shared<L>>,
}

impl<L: Clone> ReloadHandle<L> {
    /// Starts at version 0 with `logic`.
    pub fn new(logic: L) -> ReloadHandle<L> {
        ReloadHandle {
            shared: Arc::new(Shared {
                version: AtomicU64::new(0),
                next: Mutex::new(logic),
            }),
        }
    }

    /// A worker's copy of the logic published last.
    pub fn reloadable(&self) -> Reloadable<L> {
        let next = self
            .shared
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Reloadable {
            current: next.clone(),
            version: self.shared.version.load(Ordering::Acquire),
            shared: self.shared.clone(),
        }
    }

    /// Replaces the logic; workers switch before their next batch. Returns the new version.
    pub fn publish(&self, logic: L) -> u64 {
        let mut next = self
            .shared
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *next = logic;
        self.shared.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The version published last.
    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }
}

impl<L> Reloadable<L> {
    /// The version this copy decides with.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn current(&self) -> &L {
        &self.current
    }
}

impl<L: Clone> Clone for Reloadable<L> {
    fn clone(&self) -> Self {
        Reloadable {
            current: self.current.clone(),
            version: self.version,
            shared: self.shared.clone(),
        }
    }
}

impl<L: Logic + Clone> Logic for Reloadable<L> {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        self.current.prefetch(hdr)
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        self.current.decide(pkt, hdr, in_port)
    }

    fn tick(&mut self, now: Duration) {
        if self.shared.version.load(Ordering::Acquire) != self.version {
            let next = self
                .shared
                .next
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.current = next.clone();
            // Read under the lock: publish stores the logic and bumps the version together.
            self.version = self.shared.version.load(Ordering::Acquire);
        }
        self.current.tick(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::StaticMap;
    use crate::wire::parse_headers;

    fn frame() -> Vec<u8> {
        crate::pipeline::udp4_frame(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            1000,
            2000,
            64,
            0,
        )
    }

    #[test]
    fn workers_switch_on_their_next_tick_and_not_before() {
        let handle = ReloadHandle::new(StaticMap::from_pairs([(0, 1)]));
        let mut a = handle.reloadable();
        let mut b = a.clone();
        let mut f = frame();
        let h = parse_headers(&f).unwrap();
        assert_eq!(a.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(handle.publish(StaticMap::from_pairs([(0, 2)])), 1);
        // Mid-batch: still the old logic.
        assert_eq!(a.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(a.version(), 0);
        a.tick(Duration::ZERO);
        assert_eq!(a.decide(&mut f, &h, 0), Verdict::Forward(2));
        assert_eq!(a.version(), 1);
        // Every copy follows, and a copy made now starts at the newest version.
        b.tick(Duration::ZERO);
        assert_eq!(b.decide(&mut f, &h, 0), Verdict::Forward(2));
        assert_eq!(handle.reloadable().version(), 1);
        assert_eq!(handle.version(), 1);
    }
}
