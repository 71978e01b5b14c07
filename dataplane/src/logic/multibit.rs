//! The multibit trie behind [`super::Lpm4`] (DIR-24-8) and [`super::Lpm6`]: a first-level
//! table indexed by the top `FIRST` bits of the address, then groups of 256 entries ("tbl8"
//! groups, as in DPDK's rte_lpm) indexed by one more byte each, with controlled prefix
//! expansion.
//!
//! It owns the tables, the tbl8 group allocator and the rule set (one map per prefix length,
//! which the control plane lists and which `remove` consults to restore a covering route).
//! It never allocates during a lookup, and it keeps this invariant so that inserts and removes
//! are correct in any order:
//!
//! * every leaf entry carries the length ("depth") of the rule that wrote it, and an insert
//!   only overwrites entries whose depth is not longer than its own;
//! * a tbl8 group exists only while some rule longer than its parent level lies inside it, so
//!   a remove that leaves a group uniform folds it back into its parent slot and frees it.
//!
//! Keys are left-aligned `u128`s (an IPv4 address sits in the top 32 bits), so one
//! implementation serves both families.

use super::{LpmError, NextHopId};
use crate::sys::HugeTable;
use hashbrown::HashMap;

/// Entry layout (u32): bits 0..22 next-hop id or tbl8 group index, bit 22 valid leaf, bit 23
/// extended (points to a group), bits 24..32 depth. The all-zero entry is "no route", so a
/// freshly zeroed table is empty.
pub(super) const IDX_MASK: u32 = (1 << 22) - 1;
pub(super) const VALID: u32 = 1 << 22;
pub(super) const EXT: u32 = 1 << 23;
const DEPTH_SHIFT: u32 = 24;
/// Group indices must fit the 22 index bits.
pub(super) const MAX_GROUPS: u32 = 1 << 22;
const GROUP: usize = 256;
/// Deepest level a 128-bit key can need with a 16-bit first level, plus one.
const MAX_LEVELS: usize = 16;

#[inline]
const fn leaf(nh: NextHopId, depth: u8) -> u32 {
    VALID | (depth as u32) << DEPTH_SHIFT | nh as u32
}

#[inline]
const fn depth(e: u32) -> u8 {
    (e >> DEPTH_SHIFT) as u8
}

/// The next hop a final (non-extended) entry holds.
#[inline]
pub(super) const fn decode(e: u32) -> Option<NextHopId> {
    if e & VALID != 0 {
        Some(e as NextHopId)
    } else {
        None
    }
}

#[inline]
const fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        !0u128 << (128 - len as u32)
    }
}

/// A slot's table: the first level or a tbl8 group.
#[derive(Clone, Copy)]
enum Loc {
    Root,
    Group(u32),
}

/// `FIRST`: bits indexed by the first level. `KEY_BITS`: the address width (longest prefix).
#[derive(Clone)]
pub(super) struct Multibit<const FIRST: u32, const KEY_BITS: u8> {
    pub(super) tbl0: HugeTable,
    pub(super) tbl8: Vec<u32>,
    /// Freed groups, reused before carving new ones out of `tbl8`.
    free: Vec<u32>,
    /// Groups carved so far (`tbl8.len() / 256`).
    carved: u32,
    max_groups: u32,
    /// `rules[len]`: prefix (left-aligned, host bits zero) -> next hop.
    rules: Vec<HashMap<u128, NextHopId>>,
}

impl<const FIRST: u32, const KEY_BITS: u8> Multibit<FIRST, KEY_BITS> {
    pub(super) fn new(max_groups: u32) -> Result<Self, LpmError> {
        if max_groups > MAX_GROUPS {
            return Err(LpmError::Tbl8Limit {
                requested: max_groups,
                max: MAX_GROUPS,
            });
        }
        Ok(Multibit {
            // Zeroed and lazily backed; huge pages because lookups hit it at random.
            tbl0: HugeTable::zeroed(1 << FIRST),
            tbl8: Vec::new(),
            free: Vec::new(),
            carved: 0,
            max_groups,
            rules: (0..=KEY_BITS).map(|_| HashMap::new()).collect(),
        })
    }

    /// Checks a prefix and returns it left-aligned, or the error to report.
    pub(super) fn key(prefix: u128, len: u8) -> Result<u128, u128> {
        let key = prefix << (128 - KEY_BITS as u32);
        let masked = key & mask(len);
        if masked == key {
            Ok(key)
        } else {
            Err(masked >> (128 - KEY_BITS as u32))
        }
    }

    pub(super) fn max_groups(&self) -> u32 {
        self.max_groups
    }

    pub(super) fn groups_in_use(&self) -> u32 {
        self.carved - self.free.len() as u32
    }

    pub(super) fn len(&self) -> usize {
        self.rules.iter().map(HashMap::len).sum()
    }

    pub(super) fn rule(&self, key: u128, len: u8) -> Option<NextHopId> {
        self.rules.get(len as usize)?.get(&key).copied()
    }

    /// All rules as (left-aligned prefix, length, next hop), in no particular order.
    pub(super) fn rules(&self) -> impl Iterator<Item = (u128, u8, NextHopId)> + '_ {
        self.rules
            .iter()
            .enumerate()
            .flat_map(|(len, m)| m.iter().map(move |(&k, &nh)| (k, len as u8, nh)))
    }

    /// Prefetches the first-level entry `lookup(key)` will read.
    #[inline]
    pub(super) fn prefetch(&self, key: u128) {
        crate::sys::prefetch(&self.tbl0[(key >> (128 - FIRST)) as usize]);
    }

    /// Longest-prefix match for a left-aligned key.
    #[inline]
    pub(super) fn lookup(&self, key: u128) -> Option<NextHopId> {
        let mut shift = 128 - FIRST;
        let mut e = self.tbl0[(key >> shift) as usize];
        // Bounded: an extended entry never sits at the level that ends at KEY_BITS.
        while e & EXT != 0 {
            shift -= 8;
            e = self.tbl8[((e & IDX_MASK) as usize) << 8 | ((key >> shift) as usize & 0xff)];
        }
        decode(e)
    }

    /// [`Multibit::lookup`] for many keys, walked level by level in groups of eight: the reads
    /// of one level are independent, so their cache misses overlap instead of queueing
    /// behind one key's chain of dependent reads.
    #[inline]
    pub(super) fn lookup_batch(&self, keys: &[u128], out: &mut [Option<NextHopId>]) {
        const LANES: usize = 8;
        for (keys, out) in keys.chunks(LANES).zip(out.chunks_mut(LANES)) {
            let mut lanes = [0u32; LANES];
            let lanes = &mut lanes[..keys.len()];
            let mut shift = 128 - FIRST;
            for (e, &k) in lanes.iter_mut().zip(keys) {
                *e = self.tbl0[(k >> shift) as usize];
            }
            while lanes.iter().any(|&e| e & EXT != 0) {
                shift -= 8;
                for (e, &k) in lanes.iter_mut().zip(keys) {
                    if *e & EXT != 0 {
                        *e = self.tbl8
                            [((*e & IDX_MASK) as usize) << 8 | ((k >> shift) as usize & 0xff)];
                    }
                }
            }
            for (o, &e) in out.iter_mut().zip(lanes.iter()) {
                *o = decode(e);
            }
        }
    }

    /// The level whose entries a rule of `len` bits is expanded into.
    fn level_of(len: u8) -> usize {
        let len = len as u32;
        if len <= FIRST {
            0
        } else {
            (len - FIRST).div_ceil(8) as usize
        }
    }

    /// Prefix bits resolved by the entries of `level`.
    fn end(level: usize) -> u32 {
        FIRST + 8 * level as u32
    }

    fn index(key: u128, level: usize) -> usize {
        let i = (key >> (128 - Self::end(level))) as usize;
        if level == 0 { i } else { i & 0xff }
    }

    fn get(&self, loc: Loc, i: usize) -> u32 {
        match loc {
            Loc::Root => self.tbl0[i],
            Loc::Group(g) => self.tbl8[g as usize * GROUP + i],
        }
    }

    fn set(&mut self, loc: Loc, i: usize, e: u32) {
        match loc {
            Loc::Root => self.tbl0[i] = e,
            Loc::Group(g) => self.tbl8[g as usize * GROUP + i] = e,
        }
    }

    fn groups_available(&self) -> usize {
        self.free.len() + (self.max_groups - self.carved) as usize
    }

    /// Takes a group (the caller checked one is available) and fills it with `fill`.
    fn alloc_group(&mut self, fill: u32) -> u32 {
        let g = match self.free.pop() {
            Some(g) => g,
            None => {
                let g = self.carved;
                self.carved += 1;
                self.tbl8.resize(self.tbl8.len() + GROUP, 0);
                g
            }
        };
        let base = g as usize * GROUP;
        self.tbl8[base..base + GROUP].fill(fill);
        g
    }

    /// Adds or replaces a rule. `key` is left-aligned with host bits clear, `len <= KEY_BITS`.
    pub(super) fn insert(&mut self, key: u128, len: u8, nh: NextHopId) -> Result<(), LpmError> {
        let target = Self::level_of(len);

        // Count the groups this insert needs first, so that a failure changes nothing.
        let mut loc = Loc::Root;
        let mut needed = 0;
        for level in 0..target {
            let e = self.get(loc, Self::index(key, level));
            if e & EXT == 0 {
                needed = target - level;
                break;
            }
            loc = Loc::Group(e & IDX_MASK);
        }
        if needed > self.groups_available() {
            return Err(LpmError::Tbl8Exhausted {
                max_groups: self.max_groups,
            });
        }

        let mut loc = Loc::Root;
        for level in 0..target {
            let i = Self::index(key, level);
            let e = self.get(loc, i);
            let g = if e & EXT != 0 {
                e & IDX_MASK
            } else {
                // The new group starts as the expansion of the entry it replaces.
                let g = self.alloc_group(e);
                self.set(loc, i, EXT | g);
                g
            };
            loc = Loc::Group(g);
        }

        let new = leaf(nh, len);
        let start = Self::index(key, target);
        let count = 1usize << (Self::end(target) - len as u32);
        for i in start..start + count {
            let e = self.get(loc, i);
            if e & EXT != 0 {
                self.overwrite_group(e & IDX_MASK, new, len);
            } else if e & VALID == 0 || depth(e) <= len {
                self.set(loc, i, new);
            }
        }
        self.rules[len as usize].insert(key, nh);
        Ok(())
    }

    /// Writes `new` (depth `len`) over every entry under group `g` no more specific than it.
    fn overwrite_group(&mut self, g: u32, new: u32, len: u8) {
        let base = g as usize * GROUP;
        for i in base..base + GROUP {
            let e = self.tbl8[i];
            if e & EXT != 0 {
                self.overwrite_group(e & IDX_MASK, new, len);
            } else if e & VALID == 0 || depth(e) <= len {
                self.tbl8[i] = new;
            }
        }
    }

    /// Removes a rule and returns its next hop, or `None` if there was no such rule.
    pub(super) fn remove(&mut self, key: u128, len: u8) -> Option<NextHopId> {
        let nh = self.rules[len as usize].remove(&key)?;
        let repl = self.covering(key, len);
        let target = Self::level_of(len);

        let mut path = [(Loc::Root, 0usize); MAX_LEVELS];
        let mut loc = Loc::Root;
        for (level, step) in path.iter_mut().enumerate().take(target) {
            let i = Self::index(key, level);
            *step = (loc, i);
            let e = self.get(loc, i);
            // The rule existed, so its path is extended all the way down.
            debug_assert!(e & EXT != 0, "rule without a tbl8 path");
            if e & EXT == 0 {
                return Some(nh);
            }
            loc = Loc::Group(e & IDX_MASK);
        }

        let start = Self::index(key, target);
        let count = 1usize << (Self::end(target) - len as u32);
        for i in start..start + count {
            let e = self.get(loc, i);
            if e & EXT != 0 {
                self.replace_group(e & IDX_MASK, Self::end(target + 1), len, repl);
                self.try_collapse(loc, i, Self::end(target));
            } else if e & VALID != 0 && depth(e) == len {
                self.set(loc, i, repl);
            }
        }
        for level in (0..target).rev() {
            let (parent, i) = path[level];
            if !self.try_collapse(parent, i, Self::end(level)) {
                break;
            }
        }
        Some(nh)
    }

    /// Under group `g` (whose entries resolve `end` bits), replaces the entries the removed
    /// rule of depth `len` wrote with `repl`.
    fn replace_group(&mut self, g: u32, end: u32, len: u8, repl: u32) {
        let base = g as usize * GROUP;
        for j in 0..GROUP {
            let e = self.tbl8[base + j];
            if e & EXT != 0 {
                self.replace_group(e & IDX_MASK, end + 8, len, repl);
                self.try_collapse(Loc::Group(g), j, end);
            } else if e & VALID != 0 && depth(e) == len {
                self.tbl8[base + j] = repl;
            }
        }
    }

    /// Folds the group under slot `(loc, i)` back into the slot if all its entries are the
    /// same leaf and that leaf is no deeper than the `slot_end` bits the slot resolves.
    /// Returns whether the slot now holds a leaf.
    fn try_collapse(&mut self, loc: Loc, i: usize, slot_end: u32) -> bool {
        let e = self.get(loc, i);
        if e & EXT == 0 {
            return true;
        }
        let g = e & IDX_MASK;
        let base = g as usize * GROUP;
        let group = &self.tbl8[base..base + GROUP];
        let first = group[0];
        // A uniform group of longer rules (two /25 halves with one next hop) must stay: its
        // depth could not be told apart from the slot's own in later inserts and removes.
        if first & EXT != 0
            || (first & VALID != 0 && depth(first) as u32 > slot_end)
            || group.iter().any(|&x| x != first)
        {
            return false;
        }
        self.set(loc, i, first);
        self.free.push(g);
        true
    }

    /// The leaf of the longest rule shorter than `len` that covers `key`, or "no route".
    fn covering(&self, key: u128, len: u8) -> u32 {
        (0..len)
            .rev()
            .find_map(|l| {
                self.rules[l as usize]
                    .get(&(key & mask(l)))
                    .map(|&nh| leaf(nh, l))
            })
            .unwrap_or(0)
    }
}

impl<const FIRST: u32, const KEY_BITS: u8> core::fmt::Debug for Multibit<FIRST, KEY_BITS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Multibit")
            .field("rules", &self.len())
            .field("tbl8_groups_in_use", &self.groups_in_use())
            .field("max_tbl8_groups", &self.max_groups)
            .finish()
    }
}
