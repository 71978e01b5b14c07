//! L2 learning bridge: learns which port each source MAC lives behind, forwards to the learned
//! port, floods what it does not know, and forgets stations it has not heard from in
//! `max_age`.
//!
//! Owns the MAC table, its aging and its counters. Never allocates on the hot path: the table
//! is sized for `capacity` stations up front and stops learning when full (counted); aging
//! work per [`Logic::tick`] is bounded by `scan_per_tick`, so a worker never stalls on a large
//! purge. Never learns group (multicast/broadcast) or all-zero source addresses.

use super::{Logic, macs};
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::Headers;
use hashbrown::HashMap;
use std::time::Duration;

/// How a [`LearningBridge`] learns and forgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeConfig {
    /// A station not heard from for longer than this is unknown again (flooded to).
    pub max_age: Duration,
    /// Most stations the table holds; beyond it new ones are not learned.
    pub capacity: usize,
    /// Table entries examined for aging per tick.
    pub scan_per_tick: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            max_age: Duration::from_secs(300),
            capacity: 1 << 16,
            scan_per_tick: 32,
        }
    }
}

/// What the bridge has done to its table since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Stations added (including ones re-learned after aging out).
    pub learned: u64,
    /// Stations seen on a different port from the one learned.
    pub moved: u64,
    /// Source addresses not learned because the table was full.
    pub table_full: u64,
    /// Entries removed by aging.
    pub aged_out: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    last_seen: Duration,
}

/// An L2 learning bridge with aging.
#[derive(Debug, Clone)]
pub struct LearningBridge {
    table: HashMap<[u8; 6], Entry>,
    /// The table's keys in a dense array, so aging can walk a bounded slice of them per tick
    /// (a hash map has no stable cursor to resume from).
    keys: Vec<[u8; 6]>,
    cursor: usize,
    now: Duration,
    cfg: BridgeConfig,
    stats: BridgeStats,
}

impl Default for LearningBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl LearningBridge {
    /// A bridge with [`BridgeConfig::default`]: 300 s aging, 65,536 stations.
    pub fn new() -> Self {
        Self::with_config(BridgeConfig::default())
    }

    pub fn with_config(cfg: BridgeConfig) -> Self {
        LearningBridge {
            // Twice the capacity: hashbrown then always finds room by rehashing in place
            // (its rule is "in place while at most half full") and never reallocates, however
            // many removals have left tombstones.
            table: HashMap::with_capacity(cfg.capacity.saturating_mul(2)),
            keys: Vec::with_capacity(cfg.capacity),
            cursor: 0,
            now: Duration::ZERO,
            cfg,
            stats: BridgeStats::default(),
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    /// Entries in the table, including aged ones not yet purged.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn expired(&self, last_seen: Duration) -> bool {
        self.now.saturating_sub(last_seen) > self.cfg.max_age
    }

    /// The port `mac` was learned on, unless it aged out.
    #[inline]
    pub fn lookup(&self, mac: &[u8; 6]) -> Option<PortId> {
        self.table
            .get(mac)
            .filter(|e| !self.expired(e.last_seen))
            .map(|e| e.port)
    }

    /// Forgets every station.
    pub fn flush(&mut self) {
        self.table.clear();
        self.keys.clear();
        self.cursor = 0;
    }

    /// Forgets the stations learned on `port` (its link went down). Walks the whole table.
    pub fn flush_port(&mut self, port: PortId) {
        let mut i = 0;
        while i < self.keys.len() {
            if self
                .table
                .get(&self.keys[i])
                .is_some_and(|e| e.port == port)
            {
                self.evict(i);
            } else {
                i += 1;
            }
        }
    }

    #[inline]
    fn learn(&mut self, src: [u8; 6], port: PortId) {
        if src[0] & 1 != 0 || src == [0; 6] {
            return;
        }
        let now = self.now;
        let expired = |e: &Entry| now.saturating_sub(e.last_seen) > self.cfg.max_age;
        if let Some(e) = self.table.get_mut(&src) {
            if expired(e) {
                self.stats.learned += 1;
            } else if e.port != port {
                self.stats.moved += 1;
            }
            e.port = port;
            e.last_seen = now;
            return;
        }
        if self.keys.len() >= self.cfg.capacity {
            self.stats.table_full += 1;
            return;
        }
        self.keys.push(src);
        self.table.insert(
            src,
            Entry {
                port,
                last_seen: now,
            },
        );
        self.stats.learned += 1;
    }

    /// Removes the entry whose key is `keys[i]`, keeping `keys` dense (the last key moves
    /// into `i`).
    fn evict(&mut self, i: usize) {
        let key = self.keys.swap_remove(i);
        self.table.remove(&key);
    }
}

impl Logic for LearningBridge {
    #[inline]
    fn decide(&mut self, pkt: &mut [u8], _hdr: &Headers, in_port: PortId) -> Verdict {
        let Some((dst, src)) = macs(pkt) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        self.learn(src, in_port);
        if dst[0] & 1 != 0 {
            return Verdict::Broadcast;
        }
        match self.lookup(&dst) {
            Some(p) if p == in_port => Verdict::Drop(DropReason::SamePort),
            Some(p) => Verdict::Forward(p),
            None => Verdict::Broadcast,
        }
    }

    /// Records the batch time and purges up to `scan_per_tick` aged entries, resuming where the
    /// previous tick stopped.
    fn tick(&mut self, now: Duration) {
        self.now = now;
        for _ in 0..self.cfg.scan_per_tick {
            if self.keys.is_empty() {
                break;
            }
            if self.cursor >= self.keys.len() {
                self.cursor = 0;
            }
            let stale = self
                .table
                .get(&self.keys[self.cursor])
                .is_none_or(|e| self.expired(e.last_seen));
            if stale {
                // The last key moves into `cursor`; it is examined next.
                self.evict(self.cursor);
                self.stats.aged_out += 1;
            } else {
                self.cursor += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::test_frames::{self, BROADCAST, MAC_A, MAC_B};

    fn mac(n: u8) -> [u8; 6] {
        [0x02, 0, 0, 0, 1, n]
    }

    fn send(b: &mut LearningBridge, dst: [u8; 6], src: [u8; 6], port: PortId) -> Verdict {
        let (mut f, h) = test_frames::l2(dst, src);
        b.decide(&mut f, &h, port)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn learns_then_forwards() {
        let mut b = LearningBridge::new();
        assert_eq!(send(&mut b, MAC_B, MAC_A, 1), Verdict::Broadcast);
        assert_eq!(send(&mut b, MAC_A, MAC_B, 2), Verdict::Forward(1));
        assert_eq!(send(&mut b, MAC_B, MAC_A, 1), Verdict::Forward(2));
        assert_eq!(b.lookup(&MAC_A), Some(1));
        assert_eq!(b.stats().learned, 2);
    }

    #[test]
    fn broadcast_and_multicast_flood_and_are_never_learned() {
        let mut b = LearningBridge::new();
        let mcast = [0x01, 0x00, 0x5e, 0, 0, 1];
        assert_eq!(send(&mut b, BROADCAST, MAC_A, 1), Verdict::Broadcast);
        assert_eq!(send(&mut b, mcast, MAC_A, 1), Verdict::Broadcast);
        assert_eq!(send(&mut b, MAC_A, mcast, 2), Verdict::Forward(1));
        assert_eq!(send(&mut b, MAC_A, BROADCAST, 2), Verdict::Forward(1));
        assert_eq!(send(&mut b, MAC_A, [0; 6], 2), Verdict::Forward(1));
        assert_eq!(b.lookup(&mcast), None);
        assert_eq!(b.lookup(&BROADCAST), None);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn same_port_is_dropped() {
        let mut b = LearningBridge::new();
        send(&mut b, MAC_B, MAC_A, 1);
        assert_eq!(
            send(&mut b, MAC_A, MAC_B, 1),
            Verdict::Drop(DropReason::SamePort)
        );
    }

    #[test]
    fn moving_station_follows_its_new_port() {
        let mut b = LearningBridge::new();
        send(&mut b, MAC_B, MAC_A, 1);
        send(&mut b, MAC_B, MAC_A, 3);
        assert_eq!(send(&mut b, MAC_A, MAC_B, 2), Verdict::Forward(3));
        assert_eq!(b.stats().moved, 1);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn aged_entries_are_unknown_and_refreshed_ones_are_not() {
        let mut b = LearningBridge::with_config(BridgeConfig {
            max_age: secs(10),
            scan_per_tick: 0,
            ..BridgeConfig::default()
        });
        b.tick(secs(1));
        send(&mut b, MAC_B, MAC_A, 1);
        b.tick(secs(11));
        assert_eq!(
            b.lookup(&MAC_A),
            Some(1),
            "exactly max_age old is still known"
        );
        b.tick(secs(12));
        assert_eq!(b.lookup(&MAC_A), None);
        assert_eq!(send(&mut b, MAC_A, MAC_B, 2), Verdict::Broadcast);
        send(&mut b, MAC_B, MAC_A, 1);
        assert_eq!(b.stats().learned, 3, "MAC_A re-learned after aging out");
        b.tick(secs(20));
        assert_eq!(send(&mut b, MAC_A, MAC_B, 2), Verdict::Forward(1));
    }

    #[test]
    fn tick_purges_a_bounded_number_of_entries() {
        let mut b = LearningBridge::with_config(BridgeConfig {
            max_age: secs(10),
            capacity: 100,
            scan_per_tick: 3,
        });
        for n in 0..10 {
            send(&mut b, BROADCAST, mac(n), 1);
        }
        b.tick(secs(5));
        send(&mut b, BROADCAST, mac(4), 1);
        b.tick(secs(12));
        assert_eq!(b.len(), 7, "at most 3 entries examined per tick");
        for _ in 0..10 {
            b.tick(secs(12));
        }
        assert_eq!(b.len(), 1, "only the refreshed station is left");
        assert_eq!(b.lookup(&mac(4)), Some(1));
        assert_eq!(b.stats().aged_out, 9);
        for n in 0..10 {
            assert_eq!(b.lookup(&mac(n)).is_some(), n == 4);
        }
    }

    #[test]
    fn full_table_stops_learning_until_entries_age_out() {
        let mut b = LearningBridge::with_config(BridgeConfig {
            max_age: secs(10),
            capacity: 2,
            scan_per_tick: 8,
        });
        send(&mut b, BROADCAST, mac(1), 1);
        send(&mut b, BROADCAST, mac(2), 2);
        send(&mut b, BROADCAST, mac(3), 3);
        assert_eq!(b.lookup(&mac(3)), None);
        assert_eq!(b.stats().table_full, 1);
        send(&mut b, BROADCAST, mac(1), 4);
        assert_eq!(
            b.lookup(&mac(1)),
            Some(4),
            "known stations still move when full"
        );
        b.tick(secs(11));
        assert!(b.is_empty());
        send(&mut b, BROADCAST, mac(3), 3);
        assert_eq!(b.lookup(&mac(3)), Some(3));
    }

    #[test]
    fn flush_port_forgets_only_that_port() {
        let mut b = LearningBridge::new();
        for n in 0..6 {
            send(&mut b, BROADCAST, mac(n), PortId::from(n % 2));
        }
        b.flush_port(0);
        for n in 0..6 {
            assert_eq!(b.lookup(&mac(n)), (n % 2 == 1).then_some(1));
        }
        b.tick(Duration::ZERO);
        assert_eq!(b.len(), 3);
        b.flush();
        assert!(b.is_empty());
    }

    #[test]
    fn runt_frame_is_malformed() {
        let mut b = LearningBridge::new();
        let (_, h) = test_frames::l2(MAC_B, MAC_A);
        assert_eq!(
            b.decide(&mut [0u8; 11], &h, 0),
            Verdict::Drop(DropReason::Malformed)
        );
    }
}
