//! A fixed-size flow table for the per-packet path: allocated once, never grown or rehashed,
//! and cleared in constant time.
//!
//! Entries live in sets of [`WAYS`] slots chosen by a hash of the key seeded at random per
//! table, so a sender cannot aim many flows at one set. A new key takes a free or stale slot of
//! its set, else evicts the set's oldest entry: a flood of new 5-tuples costs each one a
//! bounded probe of [`WAYS`] slots and pushes old entries out, but never stalls the worker
//! (no rehash, no table-wide clear). Users must treat a lookup miss as "not known yet", never
//! as "known absent": an entry can be evicted at any time.

use std::hash::{BuildHasher, Hash};

/// Slots per set.
pub const WAYS: usize = 4;

#[derive(Clone, Copy)]
struct Slot<K, V> {
    key: K,
    value: V,
    /// Table generation the entry belongs to (0: never written; generations start at 1).
    generation: u32,
    /// Insertion order inside the table, for eviction of the oldest.
    stamp: u32,
}

/// A bounded map from flow keys (`K`, a 5-tuple or one with a port) to `V`.
pub struct FlowTable<K: Copy + Default + Eq + Hash, V: Copy + Default> {
    slots: Box<[Slot<K, V>]>,
    /// Sets - 1 (sets are a power of two).
    mask: usize,
    hasher: hashbrown::DefaultHashBuilder,
    generation: u32,
    stamp: u32,
    evictions: u64,
}

impl<K: Copy + Default + Eq + Hash, V: Copy + Default> FlowTable<K, V> {
    /// A table of at least `capacity` entries (rounded up to a power of two sets of
    /// [`WAYS`]), all allocated now.
    pub fn new(capacity: usize) -> FlowTable<K, V> {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        let empty = Slot {
            key: K::default(),
            value: V::default(),
            generation: 0,
            stamp: 0,
        };
        FlowTable {
            slots: vec![empty; sets * WAYS].into_boxed_slice(),
            mask: sets - 1,
            hasher: hashbrown::DefaultHashBuilder::default(),
            generation: 1,
            stamp: 0,
            evictions: 0,
        }
    }

    /// Entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Live entries pushed out to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn set(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize & self.mask) * WAYS
    }

    /// The value stored for `key`, if it is still there.
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        let s = self.set(key);
        self.slots[s..s + WAYS]
            .iter()
            .find(|e| e.generation == self.generation && e.key == *key)
            .map(|e| e.value)
    }

    /// Stores `value` for `key`, replacing its old value or, when its set is full, the set's
    /// oldest entry.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) {
        let s = self.set(&key);
        let generation = self.generation;
        self.stamp = self.stamp.wrapping_add(1);
        let stamp = self.stamp;
        let set = &mut self.slots[s..s + WAYS];
        let slot = match set
            .iter()
            .position(|e| e.generation == generation && e.key == key)
        {
            Some(i) => i,
            None => match set.iter().position(|e| e.generation != generation) {
                Some(i) => i,
                None => {
                    self.evictions += 1;
                    // Oldest by age relative to now, so the wrap of the stamp is harmless.
                    (0..WAYS)
                        .max_by_key(|&i| stamp.wrapping_sub(set[i].stamp))
                        .unwrap_or(0)
                }
            },
        };
        set[slot] = Slot {
            key,
            value,
            generation,
            stamp,
        };
    }

    /// Forgets every entry in constant time (they become stale; slots are reused as found).
    pub fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Once in 2^32 clears: a stale entry must never look current again.
            self.slots.iter_mut().for_each(|e| e.generation = 0);
            self.generation = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::FlowKey;

    fn key(i: u32) -> FlowKey {
        let mut k = FlowKey::default();
        k.src[12..].copy_from_slice(&i.to_be_bytes());
        k.src_port = (i % 60000) as u16;
        k.proto = 17;
        k
    }

    #[test]
    fn keeps_what_fits_and_finds_it() {
        // WAYS keys fit whatever sets the seed sends them to: nothing is evicted.
        let mut t = FlowTable::<FlowKey, u32>::new(1024);
        for i in 0..WAYS as u32 {
            t.insert(key(i), i * 2);
        }
        for i in 0..WAYS as u32 {
            assert_eq!(t.get(&key(i)), Some(i * 2));
        }
        t.insert(key(1), 7);
        assert_eq!(t.get(&key(1)), Some(7), "replaced in place");
        assert_eq!(t.get(&key(1000)), None);
        assert_eq!(t.evictions(), 0);
    }

    #[test]
    fn a_flood_of_new_flows_evicts_old_ones_without_growing() {
        let mut t = FlowTable::<FlowKey, u32>::new(256);
        let cap = t.capacity();
        for i in 0..100_000 {
            t.insert(key(i), i);
            assert_eq!(
                t.get(&key(i)),
                Some(i),
                "a new entry is always found at once"
            );
        }
        assert_eq!(t.capacity(), cap, "never grows");
        let kept = (0..100_000).filter(|&i| t.get(&key(i)).is_some()).count();
        assert!(kept <= cap, "{kept} > {cap}");
        assert!(kept > cap / 2, "most slots stay in use: {kept} of {cap}");
        assert!(t.evictions() >= 100_000 - cap as u64);
        // The most recent flows survive: in each set the oldest goes first.
        assert!(t.get(&key(99_999)).is_some());
    }

    #[test]
    fn clear_forgets_everything_at_once() {
        let mut t = FlowTable::<FlowKey, u8>::new(64);
        for i in 0..64 {
            t.insert(key(i), 1);
        }
        let before = t.evictions();
        t.clear();
        assert!((0..64).all(|i| t.get(&key(i)).is_none()));
        for i in 100..100 + WAYS as u32 {
            t.insert(key(i), 9);
        }
        assert_eq!(t.get(&key(100)), Some(9));
        assert_eq!(t.evictions(), before, "stale slots are reused, not evicted");
    }

    #[test]
    fn generations_survive_the_wrap() {
        let mut t = FlowTable::<FlowKey, u8>::new(8);
        t.insert(key(1), 1);
        t.generation = u32::MAX;
        t.insert(key(2), 2);
        t.clear();
        assert_eq!(t.generation, 1);
        assert!(t.get(&key(1)).is_none() && t.get(&key(2)).is_none());
    }
}
