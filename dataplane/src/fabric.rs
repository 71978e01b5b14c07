//! The switch fabric: mSwitch's two-phase dispatch of a batch to its destinations.
//!
//! Phase 1 takes the batch's destinations as one dense array (one entry per slot) and appends
//! each slot index to its destination's array in one tight loop. The arrays are interleaved:
//! the `k`-th slot of destination `d` sits at `k * destinations + d`, and each destination
//! keeps a cursor to its next free position, so appending is one load and two stores, and the
//! first entries of every destination share a few cache lines however many there are. Phase 2 visits
//! only the destinations that received something ([`Fabric::active`]), in the order they were
//! first touched, and reads each one's slots at a fixed stride — no list to chase. VALE's
//! original algorithm instead scans the whole batch once per destination port, which collapses
//! as ports grow; `bench/benches/fabric_dispatch.rs` compares the two.
//!
//! The fabric groups small integers (destinations) and knows nothing of ports, frames or
//! verdicts: the worker maps a [`crate::verdict::Verdict`] to a destination index. It never
//! allocates after construction.

/// Per-batch grouping of slot indices by destination.
pub struct Fabric {
    /// Slot indices, interleaved by destination (see the module docs); one spare row so a
    /// full destination's cursor still indexes inside.
    slots: Box<[u16]>,
    /// Per destination `d`: where its next slot goes, `d` while it has none.
    cursor: Box<[u32]>,
    active: Vec<u32>,
    max_batch: usize,
}

impl Fabric {
    /// Largest batch a fabric groups: slot indices are stored as `u16`.
    pub const MAX_BATCH: usize = 1 << 16;

    /// A fabric for destinations `0..destinations` and batches of up to `max_batch` slots.
    ///
    /// Panics if `max_batch` exceeds [`Fabric::MAX_BATCH`] or the interleaved arrays would
    /// not be addressable with `u32` cursors: a construction-time programming error.
    pub fn new(destinations: usize, max_batch: usize) -> Fabric {
        assert!(
            max_batch <= Self::MAX_BATCH,
            "fabric batch {max_batch} over {}",
            Self::MAX_BATCH
        );
        let rows = max_batch + 1;
        assert!(
            rows.checked_mul(destinations)
                .is_some_and(|n| n <= u32::MAX as usize),
            "fabric of {destinations} destinations x {max_batch} slots is too large"
        );
        Fabric {
            slots: vec![0; rows * destinations].into_boxed_slice(),
            cursor: (0..destinations as u32).collect(),
            active: Vec::with_capacity(destinations),
            max_batch,
        }
    }

    pub fn destinations(&self) -> usize {
        self.cursor.len()
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Phase 1: appends slot `i` to destination `dests[i]` for every `i` of a batch,
    /// forgetting the previous batch. Every destination `< destinations` and at most
    /// `max_batch` slots; otherwise this panics (a caller bug, as an out-of-range index).
    #[inline]
    pub fn push_batch(&mut self, dests: &[u32]) {
        assert!(
            dests.len() <= self.max_batch,
            "batch over the fabric's size"
        );
        self.clear();
        // Plain slices: their bounds stay in registers instead of being reloaded after every
        // store.
        let slots: &mut [u16] = &mut self.slots;
        let cursor: &mut [u32] = &mut self.cursor;
        let stride = cursor.len() as u32;
        for (slot, &d) in dests.iter().enumerate() {
            let c = cursor[d as usize];
            if c == d {
                self.active.push(d);
            }
            slots[c as usize] = slot as u16;
            cursor[d as usize] = c + stride;
        }
    }

    /// Destinations that received at least one slot of the current batch, in first-touch
    /// order.
    #[inline]
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    /// Phase 2: the slots sent to `dest`, in batch order.
    #[inline]
    pub fn slots(&self, dest: usize) -> Slots<'_> {
        Slots {
            slots: &self.slots,
            pos: dest,
            end: self.cursor[dest] as usize,
            stride: self.cursor.len(),
        }
    }

    /// Forgets the batch; costs O(active destinations), not O(destinations).
    #[inline]
    pub fn clear(&mut self) {
        for &d in &self.active {
            self.cursor[d as usize] = d;
        }
        self.active.clear();
    }
}

/// Iterator over one destination's slots: positions `pos, pos + stride, ..` before `end`.
pub struct Slots<'a> {
    slots: &'a [u16],
    pos: usize,
    end: usize,
    stride: usize,
}

impl Iterator for Slots<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.pos >= self.end {
            return None;
        }
        let s = *self.slots.get(self.pos)?;
        self.pos += self.stride;
        Some(s as usize)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end.saturating_sub(self.pos).div_ceil(self.stride);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Slots<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn groups_in_batch_order_and_visits_only_active() {
        let mut f = Fabric::new(1000, 8);
        f.push_batch(&[3, 999, 3, 0, 999]);
        assert_eq!(f.active(), &[3, 999, 0]);
        assert_eq!(f.slots(3).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(f.slots(999).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(f.slots(0).collect::<Vec<_>>(), [3]);
        assert_eq!(f.slots(1).count(), 0);
        f.clear();
        assert!(f.active().is_empty());
        assert_eq!(f.slots(3).count(), 0);
    }

    #[test]
    fn a_new_batch_forgets_the_last() {
        let mut f = Fabric::new(4, 4);
        f.push_batch(&[1, 2, 1]);
        f.push_batch(&[2, 3]);
        assert_eq!(f.active(), &[2, 3]);
        assert_eq!(f.slots(1).count(), 0);
        assert_eq!(f.slots(2).collect::<Vec<_>>(), [0]);
        assert_eq!(f.slots(3).collect::<Vec<_>>(), [1]);
    }

    proptest! {
        /// Every slot lands in exactly one group, the one of its destination, in order.
        #[test]
        fn partition_is_exact(dests in proptest::collection::vec(0u32..17, 0..256)) {
            let mut f = Fabric::new(17, 256);
            for round in 0..2 {
                f.push_batch(&dests);
                let mut seen = vec![false; dests.len()];
                for &d in f.active() {
                    let mut prev = None;
                    for s in f.slots(d as usize) {
                        prop_assert_eq!(dests[s], d);
                        prop_assert!(!seen[s]);
                        prop_assert!(prev.is_none_or(|p| p < s));
                        seen[s] = true;
                        prev = Some(s);
                    }
                }
                prop_assert!(seen.iter().all(|&x| x), "round {}", round);
                if round == 0 {
                    f.clear();
                }
            }
        }
    }
}
