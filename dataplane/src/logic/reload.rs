//! Live replacement of a worker's logic: the control side publishes a new logic (new routes,
//! a new static map, new filter rules) and every worker picks it up between two batches.
//!
//! The per-batch cost is one atomic load. A worker that sees a new version loads the published
//! snapshot (an `ArcSwap`, lock-free) and clones it, so neither side ever waits on the other
//! and a worker never decides one batch with half of an update. Logic state (a bridge's
//! learned MACs) starts over with the new logic.

use super::Logic;
use crate::verdict::{PortId, Verdict};
use crate::wire::Headers;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

struct Shared<L> {
    /// The version of `next`, readable without touching it.
    version: AtomicU64,
    /// The logic published last, with its version.
    next: ArcSwap<(u64, L)>,
    /// Serialises publishers (control threads only; workers never take it).
    publish: Mutex<()>,
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

impl<L> Clone for ReloadHandle<L> {
    /// Another handle on the same logic (for a second control thread, such as the agent's).
    fn clone(&self) -> Self {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<L: Clone> ReloadHandle<L> {
    /// Starts at version 0 with `logic`.
    pub fn new(logic: L) -> ReloadHandle<L> {
        ReloadHandle {
            shared: Arc::new(Shared {
                version: AtomicU64::new(0),
                next: ArcSwap::from_pointee((0, logic)),
                publish: Mutex::new(()),
            }),
        }
    }

    /// A worker's copy of the logic published last.
    pub fn reloadable(&self) -> Reloadable<L> {
        let next = self.shared.next.load_full();
        Reloadable {
            current: next.1.clone(),
            version: next.0,
            shared: self.shared.clone(),
        }
    }

    /// Replaces the logic; workers switch before their next batch. Returns the new version.
    pub fn publish(&self, logic: L) -> u64 {
        self.publish_with(|_| logic)
    }

    /// Publishes the logic `make` builds for the version it will have (for logic that
    /// carries its own version). Returns that version.
    pub fn publish_with(&self, make: impl FnOnce(u64) -> L) -> u64 {
        let _one = (self.shared.publish.lock()).unwrap_or_else(PoisonError::into_inner);
        let version = self.shared.version.load(Ordering::Acquire) + 1;
        self.shared.next.store(Arc::new((version, make(version))));
        // After the store: a worker that sees this version finds its logic in `next`.
        self.shared.version.store(version, Ordering::Release);
        version
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
            let next = self.shared.next.load();
            // The snapshot carries its own version: a publish racing with this load is
            // picked up at the next tick.
            self.current = next.1.clone();
            self.version = next.0;
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
        crate::synthetic::udp4_frame(
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

    /// Logic that only says which version it was published as.
    #[derive(Clone)]
    struct Tagged(u64);

    impl Logic for Tagged {
        fn decide(&mut self, _: &mut [u8], _: &Headers, _: PortId) -> Verdict {
            Verdict::Forward(self.0 as PortId)
        }
    }

    #[test]
    fn readers_on_other_threads_always_see_a_whole_snapshot_of_its_own_version() {
        let handle = ReloadHandle::new(Tagged(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let mut r = handle.reloadable();
                std::thread::spawn(move || {
                    let mut last = 0;
                    while last < 20_000 {
                        r.tick(Duration::ZERO);
                        // The logic is the one published as the version it claims, and
                        // versions only go forward.
                        assert_eq!(r.current().0, r.version());
                        assert!(r.version() >= last);
                        last = r.version();
                    }
                })
            })
            .collect();
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let h = handle.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        // Each logic carries the version it is published as.
                        let _ = h.publish_with(Tagged);
                    }
                })
            })
            .collect();
        for t in publishers.into_iter().chain(readers) {
            t.join().unwrap();
        }
        assert_eq!(handle.version(), 20_000);
    }
}
