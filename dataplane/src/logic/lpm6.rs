//! IPv6 longest-prefix match: a multibit trie with controlled prefix expansion, in the manner
//! of DPDK's rte_lpm6 — a 2^16-entry first table indexed by the top 16 bits, then 256-entry
//! tbl8 groups, one per further byte. A lookup reads at most 15 entries; a /48 takes 5.
//!
//! The first level is 16 bits rather than rte_lpm6's 24 because IPv6 tables are small next to
//! IPv4 ones and a router holds both: 256 KiB instead of another 64 MiB per worker, for one
//! more read per lookup.
//!
//! Owns the tables and the rule set. Never allocates or fails in [`Lpm6::lookup`]; inserts and
//! removes are correct in any order of overlapping prefixes. Prefixes with host bits set are
//! rejected, as in [`super::Lpm4`].

use super::multibit::Multibit;
use super::{LpmError, NextHopId};
use core::net::{IpAddr, Ipv6Addr};

/// An IPv6 routing table: prefix -> [`NextHopId`].
#[derive(Clone, Debug)]
pub struct Lpm6 {
    t: Multibit<16, 128>,
}

impl Default for Lpm6 {
    fn default() -> Self {
        Self::new()
    }
}

impl Lpm6 {
    /// The tbl8 group limit of [`Lpm6::new`] (64 MiB if all are used; groups are allocated as
    /// routes need them). A /48 whose first 16 bits no other route shares needs 4 groups.
    pub const DEFAULT_MAX_TBL8_GROUPS: u32 = 1 << 16;

    /// An empty table with [`Lpm6::DEFAULT_MAX_TBL8_GROUPS`].
    pub fn new() -> Self {
        match Self::with_max_tbl8_groups(Self::DEFAULT_MAX_TBL8_GROUPS) {
            Ok(t) => t,
            Err(e) => unreachable!("the default tbl8 limit is valid: {e}"),
        }
    }

    /// An empty table with at most `max_groups` tbl8 groups (at most 2^22).
    pub fn with_max_tbl8_groups(max_groups: u32) -> Result<Self, LpmError> {
        Ok(Lpm6 {
            t: Multibit::new(max_groups)?,
        })
    }

    fn key(prefix: Ipv6Addr, len: u8) -> Result<u128, LpmError> {
        if len > 128 {
            return Err(LpmError::PrefixTooLong { len, max: 128 });
        }
        Multibit::<16, 128>::key(u128::from(prefix), len).map_err(|masked| LpmError::HostBitsSet {
            prefix: IpAddr::V6(prefix),
            len,
            masked: IpAddr::V6(Ipv6Addr::from(masked)),
        })
    }

    /// Adds the route `prefix/len -> nh`, replacing the next hop if the route exists.
    pub fn insert(&mut self, prefix: Ipv6Addr, len: u8, nh: NextHopId) -> Result<(), LpmError> {
        let key = Self::key(prefix, len)?;
        self.t.insert(key, len, nh)
    }

    /// Removes the route `prefix/len`; returns its next hop, or `None` if there was no such
    /// route. Addresses it covered fall back to the next shorter route that covers them.
    pub fn remove(&mut self, prefix: Ipv6Addr, len: u8) -> Result<Option<NextHopId>, LpmError> {
        let key = Self::key(prefix, len)?;
        Ok(self.t.remove(key, len))
    }

    /// The next hop of exactly the route `prefix/len`, if it exists.
    pub fn route(&self, prefix: Ipv6Addr, len: u8) -> Option<NextHopId> {
        let key = Self::key(prefix, len).ok()?;
        self.t.rule(key, len)
    }

    /// Longest-prefix match.
    #[inline]
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<NextHopId> {
        self.t.lookup(u128::from(addr))
    }

    /// Prefetches the first-level entry `lookup(addr)` will read.
    #[inline]
    pub fn prefetch(&self, addr: Ipv6Addr) {
        self.t.prefetch(u128::from(addr))
    }

    /// [`Lpm6::lookup`] on an address as a `u128` (`u128::from(Ipv6Addr)`).
    #[inline]
    pub fn lookup_u128(&self, addr: u128) -> Option<NextHopId> {
        self.t.lookup(addr)
    }

    /// Looks up `addrs` (as `u128`s) into `out`, pairwise; stops at the shorter slice. Walks
    /// eight addresses a level at a time so that their cache misses overlap.
    #[inline]
    pub fn lookup_batch(&self, addrs: &[u128], out: &mut [Option<NextHopId>]) {
        self.t.lookup_batch(addrs, out)
    }

    /// All routes as (prefix, length, next hop), in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (Ipv6Addr, u8, NextHopId)> + '_ {
        self.t
            .rules()
            .map(|(k, len, nh)| (Ipv6Addr::from(k), len, nh))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// tbl8 groups in use right now.
    pub fn tbl8_groups_in_use(&self) -> u32 {
        self.t.groups_in_use()
    }

    pub fn max_tbl8_groups(&self) -> u32 {
        self.t.max_groups()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn rand128(rng: &mut u64) -> u128 {
        (splitmix64(rng) as u128) << 64 | splitmix64(rng) as u128
    }

    fn mask(len: u8) -> u128 {
        if len == 0 { 0 } else { !0u128 << (128 - len) }
    }

    #[test]
    fn hand_cases() {
        let mut t = Lpm6::new();
        assert_eq!(t.lookup(ip("2001:db8::1")), None);
        t.insert(ip("::"), 0, 1).unwrap();
        t.insert(ip("2001:db8::"), 32, 32).unwrap();
        t.insert(ip("2001:db8:0:1::"), 64, 64).unwrap();
        t.insert(ip("2001:db8:0:1::42"), 128, 128).unwrap();
        t.insert(ip("2001::"), 16, 16).unwrap();
        assert_eq!(t.lookup(ip("fe80::1")), Some(1));
        assert_eq!(t.lookup(ip("2001:1::1")), Some(16));
        assert_eq!(t.lookup(ip("2001:db8:ffff::1")), Some(32));
        assert_eq!(t.lookup(ip("2001:db8:0:1::1")), Some(64));
        assert_eq!(t.lookup(ip("2001:db8:0:1::42")), Some(128));
        assert_eq!(t.remove(ip("2001:db8:0:1::"), 64), Ok(Some(64)));
        assert_eq!(t.lookup(ip("2001:db8:0:1::1")), Some(32));
        assert_eq!(t.lookup(ip("2001:db8:0:1::42")), Some(128));
        assert_eq!(t.remove(ip("2001:db8:0:1::42"), 128), Ok(Some(128)));
        assert_eq!(t.lookup(ip("2001:db8:0:1::42")), Some(32));
        assert_eq!(t.remove(ip("2001:db8::"), 32), Ok(Some(32)));
        assert_eq!(t.tbl8_groups_in_use(), 0);
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(16));
        assert_eq!(
            t.insert(ip("2001:db8::1"), 64, 1).unwrap_err().to_string(),
            "prefix 2001:db8::1/64 has bits set past its length (did you mean 2001:db8::/64?)"
        );
        assert_eq!(
            t.insert(ip("::"), 129, 1),
            Err(LpmError::PrefixTooLong { len: 129, max: 128 })
        );
    }

    #[test]
    fn tbl8_exhaustion_changes_nothing() {
        let mut t = Lpm6::with_max_tbl8_groups(3).unwrap();
        t.insert(ip("2001:db8::"), 32, 1).unwrap();
        assert_eq!(
            t.insert(ip("2001:db8:1::"), 48, 2),
            Err(LpmError::Tbl8Exhausted { max_groups: 3 })
        );
        assert_eq!(t.tbl8_groups_in_use(), 2);
        assert_eq!(t.lookup(ip("2001:db8:1::1")), Some(1));
        assert_eq!(t.len(), 1);
    }

    fn naive(rules: &[(u128, u8, NextHopId)], a: u128) -> Option<NextHopId> {
        rules
            .iter()
            .filter(|&&(p, len, _)| (a ^ p) & mask(len) == 0)
            .max_by_key(|&&(_, len, _)| len)
            .map(|&(_, _, nh)| nh)
    }

    /// An address near an existing rule (inside it, or sharing a random number of its
    /// leading bits), or a fresh one from a few clusters.
    fn near(rng: &mut u64, rules: &[(u128, u8, NextHopId)]) -> u128 {
        let r = splitmix64(rng);
        if !rules.is_empty() && !r.is_multiple_of(4) {
            let (p, len, _) = rules[(r >> 8) as usize % rules.len()];
            let keep = if r >> 40 & 1 == 0 {
                len
            } else {
                (r >> 48) as u8 % 129
            };
            (p & mask(keep)) | (rand128(rng) & !mask(keep))
        } else {
            let top = [0x2001_0db8u128, 0xfe80_0000, 0x2001_0db9][(r >> 8) as usize % 3];
            top << 96 | (rand128(rng) & ((1 << 96) - 1) & (r as u128 * 0x0101_0101_0101))
        }
    }

    #[test]
    fn differential_against_linear_scan() {
        let mut rng = 0x5eed_0006u64;
        let mut t = Lpm6::new();
        let mut rules: Vec<(u128, u8, NextHopId)> = Vec::new();
        for op in 0..2_000 {
            let r = splitmix64(&mut rng);
            let len = (r % 129) as u8;
            let p = near(&mut rng, &rules) & mask(len);
            let existing = rules.iter().position(|&(q, l, _)| q == p && l == len);
            if (r >> 16).is_multiple_of(3) {
                let removed = t.remove(Ipv6Addr::from(p), len).unwrap();
                assert_eq!(removed, existing.map(|i| rules[i].2), "remove {p:#x}/{len}");
                if let Some(i) = existing {
                    rules.swap_remove(i);
                }
            } else {
                let nh = (r >> 32) as NextHopId;
                t.insert(Ipv6Addr::from(p), len, nh).unwrap();
                match existing {
                    Some(i) => rules[i].2 = nh,
                    None => rules.push((p, len, nh)),
                }
            }
            if op % 100 == 0 {
                for _ in 0..100 {
                    let a = near(&mut rng, &rules);
                    assert_eq!(t.lookup_u128(a), naive(&rules, a), "{op}: lookup {a:#x}");
                }
            }
        }
        assert_eq!(t.len(), rules.len());
        let addrs: Vec<u128> = (0..20_000).map(|_| near(&mut rng, &rules)).collect();
        let mut batch = vec![None; addrs.len()];
        t.lookup_batch(&addrs, &mut batch[..addrs.len() - 3]);
        for (i, &a) in addrs.iter().enumerate() {
            let want = naive(&rules, a);
            assert_eq!(t.lookup_u128(a), want, "lookup {a:#x}");
            if i < addrs.len() - 3 {
                assert_eq!(batch[i], want, "batch lookup {a:#x}");
            }
        }
        let mut listed: Vec<_> = t
            .routes()
            .map(|(p, l, nh)| (u128::from(p), l, nh))
            .collect();
        listed.sort_unstable();
        rules.sort_unstable();
        assert_eq!(listed, rules);
        // Remove in a different order from the inserts.
        rules.reverse();
        for &(p, len, _) in &rules {
            t.remove(Ipv6Addr::from(p), len).unwrap();
        }
        assert_eq!(
            t.tbl8_groups_in_use(),
            0,
            "every group is freed with its routes"
        );
        assert!(
            t.t.tbl0.iter().all(|&e| e == 0),
            "no entry outlives its route"
        );
    }
}
