//! IPv4 longest-prefix match, DIR-24-8 (the layout of DPDK's rte_lpm): a 2^24-entry first
//! table indexed by the top 24 bits of the address, and 256-entry tbl8 groups for the /24s
//! that hold longer prefixes. A lookup is one array read, or two.
//!
//! Owns the tables and the rule set the control plane reads back. Never allocates or fails in
//! [`Lpm4::lookup`]; inserts and removes (control plane) may allocate tbl8 groups and are
//! correct in any order of overlapping prefixes.
//!
//! Prefixes with bits set past their length (`10.0.0.1/8`) are rejected with
//! [`LpmError::HostBitsSet`] rather than masked: such a route is almost always a typo, and
//! masking would make `remove` of the same spelling succeed on a different route.

use super::multibit::{self, Multibit};
use super::{LpmError, NextHopId};
use core::net::{IpAddr, Ipv4Addr};

/// An IPv4 routing table: prefix -> [`NextHopId`].
///
/// The first-level table is 64 MiB of zeroed memory; only the pages that routes write are
/// backed by RAM (a default route touches all of them).
#[derive(Clone, Debug)]
pub struct Lpm4 {
    t: Multibit<24, 32>,
}

impl Default for Lpm4 {
    fn default() -> Self {
        Self::new()
    }
}

impl Lpm4 {
    /// The tbl8 group limit of [`Lpm4::new`]: 65,536 /24s holding longer prefixes (64 MiB if
    /// all are used; groups are allocated as routes need them).
    pub const DEFAULT_MAX_TBL8_GROUPS: u32 = 1 << 16;

    /// An empty table with [`Lpm4::DEFAULT_MAX_TBL8_GROUPS`].
    pub fn new() -> Self {
        match Self::with_max_tbl8_groups(Self::DEFAULT_MAX_TBL8_GROUPS) {
            Ok(t) => t,
            Err(e) => unreachable!("the default tbl8 limit is valid: {e}"),
        }
    }

    /// An empty table that can hold longer-than-/24 prefixes in at most `max_groups` distinct
    /// /24s (at most 2^22).
    pub fn with_max_tbl8_groups(max_groups: u32) -> Result<Self, LpmError> {
        Ok(Lpm4 {
            t: Multibit::new(max_groups)?,
        })
    }

    fn key(prefix: Ipv4Addr, len: u8) -> Result<u128, LpmError> {
        if len > 32 {
            return Err(LpmError::PrefixTooLong { len, max: 32 });
        }
        Multibit::<24, 32>::key(u32::from(prefix).into(), len).map_err(|masked| {
            LpmError::HostBitsSet {
                prefix: IpAddr::V4(prefix),
                len,
                masked: IpAddr::V4(Ipv4Addr::from(masked as u32)),
            }
        })
    }

    /// Adds the route `prefix/len -> nh`, replacing the next hop if the route exists.
    pub fn insert(&mut self, prefix: Ipv4Addr, len: u8, nh: NextHopId) -> Result<(), LpmError> {
        let key = Self::key(prefix, len)?;
        self.t.insert(key, len, nh)
    }

    /// Removes the route `prefix/len`; returns its next hop, or `None` if there was no such
    /// route. Addresses it covered fall back to the next shorter route that covers them.
    pub fn remove(&mut self, prefix: Ipv4Addr, len: u8) -> Result<Option<NextHopId>, LpmError> {
        let key = Self::key(prefix, len)?;
        Ok(self.t.remove(key, len))
    }

    /// The next hop of exactly the route `prefix/len`, if it exists.
    pub fn route(&self, prefix: Ipv4Addr, len: u8) -> Option<NextHopId> {
        let key = Self::key(prefix, len).ok()?;
        self.t.rule(key, len)
    }

    /// Longest-prefix match.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<NextHopId> {
        self.lookup_u32(u32::from(addr))
    }

    /// Prefetches the first-level entry `lookup(addr)` will read.
    #[inline]
    pub fn prefetch(&self, addr: Ipv4Addr) {
        // Keys are left-aligned in the shared engine.
        self.t.prefetch((u32::from(addr) as u128) << 96)
    }

    /// [`Lpm4::lookup`] on an address in host byte order.
    #[inline]
    pub fn lookup_u32(&self, addr: u32) -> Option<NextHopId> {
        let mut e = self.t.tbl0[(addr >> 8) as usize];
        if e & multibit::EXT != 0 {
            let g = (e & multibit::IDX_MASK) as usize;
            e = self.t.tbl8[g << 8 | (addr & 0xff) as usize];
        }
        multibit::decode(e)
    }

    /// Looks up `addrs` (host byte order) into `out`, pairwise; stops at the shorter slice.
    /// Independent lookups in one loop let the CPU overlap their cache misses.
    #[inline]
    pub fn lookup_batch(&self, addrs: &[u32], out: &mut [Option<NextHopId>]) {
        for (o, &a) in out.iter_mut().zip(addrs) {
            *o = self.lookup_u32(a);
        }
    }

    /// All routes as (prefix, length, next hop), in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (Ipv4Addr, u8, NextHopId)> + '_ {
        self.t
            .rules()
            .map(|(k, len, nh)| (Ipv4Addr::from((k >> 96) as u32), len, nh))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// tbl8 groups holding routes longer than /24 right now.
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

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn empty_table_has_no_route() {
        let t = Lpm4::new();
        assert_eq!(t.lookup(ip("1.2.3.4")), None);
        assert!(t.is_empty());
    }

    #[test]
    fn default_route_and_host_route() {
        let mut t = Lpm4::new();
        t.insert(ip("0.0.0.0"), 0, 1).unwrap();
        t.insert(ip("192.0.2.7"), 32, 2).unwrap();
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(1));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(1));
        assert_eq!(t.lookup(ip("192.0.2.7")), Some(2));
        assert_eq!(t.lookup(ip("192.0.2.6")), Some(1));
        assert_eq!(t.tbl8_groups_in_use(), 1);
        assert_eq!(t.remove(ip("192.0.2.7"), 32), Ok(Some(2)));
        assert_eq!(t.lookup(ip("192.0.2.7")), Some(1));
        assert_eq!(
            t.tbl8_groups_in_use(),
            0,
            "the group folds back once uniform"
        );
        assert_eq!(t.remove(ip("0.0.0.0"), 0), Ok(Some(1)));
        assert_eq!(t.lookup(ip("8.8.8.8")), None);
    }

    #[test]
    fn shorter_prefix_inserted_later_does_not_override_longer() {
        let mut t = Lpm4::new();
        t.insert(ip("10.1.2.0"), 24, 24).unwrap();
        t.insert(ip("10.1.2.128"), 25, 25).unwrap();
        t.insert(ip("10.0.0.0"), 8, 8).unwrap();
        t.insert(ip("10.1.0.0"), 16, 16).unwrap();
        assert_eq!(t.lookup(ip("10.1.2.1")), Some(24));
        assert_eq!(t.lookup(ip("10.1.2.200")), Some(25));
        assert_eq!(t.lookup(ip("10.1.3.1")), Some(16));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(8));
    }

    #[test]
    fn removing_restores_the_covering_route() {
        let mut t = Lpm4::new();
        t.insert(ip("10.1.0.0"), 16, 16).unwrap();
        t.insert(ip("10.1.2.0"), 24, 24).unwrap();
        t.insert(ip("10.1.2.0"), 25, 25).unwrap();
        assert_eq!(t.lookup(ip("10.1.2.1")), Some(25));
        assert_eq!(t.remove(ip("10.1.2.0"), 24), Ok(Some(24)));
        assert_eq!(
            t.lookup(ip("10.1.2.1")),
            Some(25),
            "the /25 survives its /24"
        );
        assert_eq!(
            t.lookup(ip("10.1.2.129")),
            Some(16),
            "the /16 shows through"
        );
        assert_eq!(t.remove(ip("10.1.2.0"), 25), Ok(Some(25)));
        assert_eq!(t.lookup(ip("10.1.2.1")), Some(16));
        assert_eq!(t.tbl8_groups_in_use(), 0);
        assert_eq!(t.remove(ip("10.1.2.0"), 25), Ok(None), "already gone");
    }

    #[test]
    fn replacing_a_route_changes_only_its_own_entries() {
        let mut t = Lpm4::new();
        t.insert(ip("10.0.0.0"), 8, 1).unwrap();
        t.insert(ip("10.0.0.0"), 9, 2).unwrap();
        t.insert(ip("10.0.0.0"), 8, 3).unwrap();
        assert_eq!(t.lookup(ip("10.1.0.0")), Some(2));
        assert_eq!(t.lookup(ip("10.200.0.0")), Some(3));
        assert_eq!(t.route(ip("10.0.0.0"), 8), Some(3));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn uniform_group_of_long_prefixes_is_not_folded() {
        // Two /25 halves with one next hop make a uniform group; folding it into the /24 slot
        // would lose the fact that a later /24 must not override them.
        let mut t = Lpm4::new();
        t.insert(ip("10.0.0.0"), 25, 7).unwrap();
        t.insert(ip("10.0.0.128"), 25, 7).unwrap();
        t.insert(ip("10.0.0.0"), 26, 9).unwrap();
        t.remove(ip("10.0.0.0"), 26).unwrap();
        t.insert(ip("10.0.0.0"), 24, 1).unwrap();
        assert_eq!(t.lookup(ip("10.0.0.1")), Some(7));
        t.remove(ip("10.0.0.0"), 25).unwrap();
        assert_eq!(t.lookup(ip("10.0.0.1")), Some(1));
        assert_eq!(t.lookup(ip("10.0.0.200")), Some(7));
    }

    #[test]
    fn a_clone_keeps_its_answers_while_the_original_changes() {
        let mut rng = 0x5eed_c10eu64;
        let mut t = Lpm4::new();
        let mut rules: Vec<(u32, u8, NextHopId)> = Vec::new();
        let mut snapshots = Vec::new();
        for op in 0..600 {
            let r = splitmix64(&mut rng);
            let len = 8 + (r >> 8) as u8 % 25;
            let p = clustered(&mut rng) & (!0u32 << (32 - len));
            random_change(&mut t, &mut rules, r, p, len);
            if op % 60 == 0 {
                snapshots.push((t.clone(), rules.clone()));
            }
        }
        for (snap, rules) in &snapshots {
            assert_eq!(snap.len(), rules.len());
            for _ in 0..500 {
                let a = clustered(&mut rng);
                assert_eq!(snap.lookup_u32(a), naive(rules, a), "lookup {a:#x}");
            }
        }
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        let mut t = Lpm4::new();
        assert_eq!(
            t.insert(ip("10.0.0.0"), 33, 1),
            Err(LpmError::PrefixTooLong { len: 33, max: 32 })
        );
        let e = t.insert(ip("10.0.0.1"), 8, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "prefix 10.0.0.1/8 has bits set past its length (did you mean 10.0.0.0/8?)"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn tbl8_exhaustion_is_an_error_that_changes_nothing() {
        let mut t = Lpm4::with_max_tbl8_groups(1).unwrap();
        t.insert(ip("10.0.0.0"), 16, 1).unwrap();
        t.insert(ip("10.0.0.0"), 25, 2).unwrap();
        t.insert(ip("10.0.0.128"), 25, 3).unwrap();
        assert_eq!(
            t.insert(ip("10.0.1.0"), 25, 4),
            Err(LpmError::Tbl8Exhausted { max_groups: 1 })
        );
        assert_eq!(t.lookup(ip("10.0.1.1")), Some(1));
        assert_eq!(t.len(), 3);
        t.remove(ip("10.0.0.0"), 25).unwrap();
        t.remove(ip("10.0.0.128"), 25).unwrap();
        t.insert(ip("10.0.1.0"), 25, 4).unwrap();
        assert_eq!(t.lookup(ip("10.0.1.1")), Some(4));
        assert!(Lpm4::with_max_tbl8_groups(u32::MAX).is_err());
    }

    #[test]
    fn batch_matches_single_lookups() {
        let mut t = Lpm4::new();
        t.insert(ip("10.0.0.0"), 8, 1).unwrap();
        t.insert(ip("10.9.9.9"), 32, 2).unwrap();
        let addrs = [ip("10.9.9.9"), ip("10.9.9.8"), ip("11.0.0.0")].map(u32::from);
        let mut out = [None; 3];
        t.lookup_batch(&addrs, &mut out);
        assert_eq!(out, [Some(2), Some(1), None]);
    }

    /// Addresses drawn from a few clusters, so that random prefixes overlap at every length.
    fn clustered(rng: &mut u64) -> u32 {
        let r = splitmix64(rng);
        let b0 = [10u32, 11, 192][(r % 3) as usize];
        let b1 = [0u32, 1, 2, 255][(r >> 8 & 3) as usize];
        let b2 = [0u32, 1, 128, (r >> 16) as u32 & 0xff][(r >> 24 & 3) as usize];
        let b3 = [0u32, 128, 64, (r >> 32) as u32 & 0xff][(r >> 40 & 3) as usize];
        b0 << 24 | b1 << 16 | b2 << 8 | b3
    }

    /// Applies one change drawn from `r` to `t` and to `rules`, its model: a third of the time
    /// removes `p/len` and returns (what the table removed, what the model held); otherwise
    /// inserts it with a next hop from `r`.
    fn random_change(
        t: &mut Lpm4,
        rules: &mut Vec<(u32, u8, NextHopId)>,
        r: u64,
        p: u32,
        len: u8,
    ) -> Option<(Option<NextHopId>, Option<NextHopId>)> {
        let existing = rules.iter().position(|&(q, l, _)| q == p && l == len);
        if (r >> 16).is_multiple_of(3) {
            let removed = t.remove(Ipv4Addr::from(p), len).unwrap();
            let expected = existing.map(|i| rules.swap_remove(i).2);
            Some((removed, expected))
        } else {
            let nh = (r >> 32) as NextHopId;
            t.insert(Ipv4Addr::from(p), len, nh).unwrap();
            match existing {
                Some(i) => rules[i].2 = nh,
                None => rules.push((p, len, nh)),
            }
            None
        }
    }

    fn naive(rules: &[(u32, u8, NextHopId)], a: u32) -> Option<NextHopId> {
        rules
            .iter()
            .filter(|&&(p, len, _)| len == 0 || (a ^ p) >> (32 - len as u32) == 0)
            .max_by_key(|&&(_, len, _)| len)
            .map(|&(_, _, nh)| nh)
    }

    #[test]
    fn differential_against_linear_scan() {
        let mut rng = 0x5eed_0004u64;
        let mut t = Lpm4::new();
        let mut rules: Vec<(u32, u8, NextHopId)> = Vec::new();
        for op in 0..2_000 {
            let r = splitmix64(&mut rng);
            // Short prefixes write up to 2^24 entries each: keep them rare so the test is quick.
            let len = if r.is_multiple_of(200) {
                (r >> 8) as u8 % 8
            } else {
                8 + (r >> 8) as u8 % 25
            };
            let mask = if len == 0 { 0 } else { !0u32 << (32 - len) };
            let p = clustered(&mut rng) & mask;
            if let Some((removed, expected)) = random_change(&mut t, &mut rules, r, p, len) {
                assert_eq!(removed, expected, "remove {p:#x}/{len}");
            }
            if op % 100 == 0 {
                for _ in 0..100 {
                    let a = clustered(&mut rng);
                    assert_eq!(t.lookup_u32(a), naive(&rules, a), "{op}: lookup {a:#x}");
                }
            }
        }
        assert_eq!(t.len(), rules.len());
        for i in 0..20_000 {
            let a = if i % 4 == 0 {
                splitmix64(&mut rng) as u32
            } else {
                clustered(&mut rng)
            };
            assert_eq!(t.lookup_u32(a), naive(&rules, a), "lookup {a:#x}");
        }
        let mut listed: Vec<_> = t.routes().map(|(p, l, nh)| (u32::from(p), l, nh)).collect();
        listed.sort_unstable();
        rules.sort_unstable();
        assert_eq!(listed, rules);
        for &(p, len, _) in &rules {
            t.remove(Ipv4Addr::from(p), len).unwrap();
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
