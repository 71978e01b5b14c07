//! The switch fabric: mSwitch's two-phase dispatch of a batch to its destinations.
//!
//! Phase 1 walks the batch once and appends each packet's slot index to the list of its
//! destination — lists are threaded through a per-slot `next` array with a head and tail per
//! destination, so appending is two stores. Phase 2 visits only the destinations that received
//! something ([`Fabric::active`]), in the order they were first touched. VALE's original
//! algorithm instead scans the whole batch once per destination port, which collapses as ports
//! grow; `bench/benches/fabric_dispatch.rs` compares the two.
//!
//! The fabric groups small integers (destinations) and knows nothing of ports, frames or
//! verdicts: the worker maps a [`crate::verdict::Verdict`] to a destination index. It never
//! allocates after construction.

const NIL: u32 = u32::MAX;

/// Per-batch grouping of slot indices by destination.
pub struct Fabric {
    head: Box<[u32]>,
    tail: Box<[u32]>,
    next: Box<[u32]>,
    active: Vec<u32>,
}

impl Fabric {
    /// A fabric for destinations `0..destinations` and batches of up to `max_batch` slots.
    pub fn new(destinations: usize, max_batch: usize) -> Fabric {
        Fabric {
            head: vec![NIL; destinations].into_boxed_slice(),
            tail: vec![NIL; destinations].into_boxed_slice(),
            next: vec![NIL; max_batch].into_boxed_slice(),
            active: Vec::with_capacity(destinations),
        }
    }

    pub fn destinations(&self) -> usize {
        self.head.len()
    }

    pub fn max_batch(&self) -> usize {
        self.next.len()
    }

    /// Phase 1: appends batch slot `slot` to destination `dest`'s list. Slots of one batch must
    /// be pushed in increasing order (lists keep batch order); `slot < max_batch` and
    /// `dest < destinations`.
    #[inline]
    pub fn push(&mut self, slot: usize, dest: usize) {
        let s = slot as u32;
        // A list ends at its tail, so the new slot's `next` need not be written now.
        let t = self.tail[dest];
        if t == NIL {
            self.head[dest] = s;
            self.active.push(dest as u32);
        } else {
            self.next[t as usize] = s;
        }
        self.tail[dest] = s;
    }

    /// Destinations that received at least one slot since the last [`Fabric::clear`], in
    /// first-touch order.
    #[inline]
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    /// Phase 2: the slots sent to `dest`, in batch order.
    #[inline]
    pub fn slots(&self, dest: usize) -> Slots<'_> {
        Slots {
            next: &self.next,
            cur: self.head[dest],
            last: self.tail[dest],
        }
    }

    /// Forgets the batch; costs O(active destinations), not O(destinations).
    #[inline]
    pub fn clear(&mut self) {
        for &d in &self.active {
            self.head[d as usize] = NIL;
            self.tail[d as usize] = NIL;
        }
        self.active.clear();
    }
}

/// Iterator over one destination's slots.
pub struct Slots<'a> {
    next: &'a [u32],
    cur: u32,
    last: u32,
}

impl Iterator for Slots<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.cur == NIL {
            return None;
        }
        let s = self.cur as usize;
        self.cur = if self.cur == self.last {
            NIL
        } else {
            self.next[s]
        };
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn groups_in_batch_order_and_visits_only_active() {
        let mut f = Fabric::new(1000, 8);
        for (slot, dest) in [3, 999, 3, 0, 999].into_iter().enumerate() {
            f.push(slot, dest);
        }
        assert_eq!(f.active(), &[3, 999, 0]);
        assert_eq!(f.slots(3).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(f.slots(999).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(f.slots(0).collect::<Vec<_>>(), [3]);
        f.clear();
        assert!(f.active().is_empty());
        assert_eq!(f.slots(3).count(), 0);
    }

    proptest! {
        /// Every slot lands in exactly one list, the one of its destination, in order.
        #[test]
        fn partition_is_exact(dests in proptest::collection::vec(0usize..17, 0..256)) {
            let mut f = Fabric::new(17, 256);
            for round in 0..2 {
                for (slot, &d) in dests.iter().enumerate() {
                    f.push(slot, d);
                }
                let mut seen = vec![false; dests.len()];
                for &d in f.active() {
                    let mut prev = None;
                    for s in f.slots(d as usize) {
                        prop_assert_eq!(dests[s], d as usize);
                        prop_assert!(!seen[s]);
                        prop_assert!(prev.is_none_or(|p| p < s));
                        seen[s] = true;
                        prev = Some(s);
                    }
                }
                prop_assert!(seen.iter().all(|&x| x), "round {}", round);
                f.clear();
            }
        }
    }
}
