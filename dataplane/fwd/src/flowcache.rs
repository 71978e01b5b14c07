//! Max mode's policy: which flows the XDP program caches, when they age out, and what a
//! failure to cache costs.
//!
//! Workers report every flow they forwarded ([`Learned`], from `fastpath::FlowLearner`); the
//! control thread passes them here. A report decided by logic that a reload has since replaced
//! is dropped (its decision may be stale). Aging asks each port's map to remove flows whose
//! packet count stopped moving. A map that refuses an entry (full, or any other error) costs
//! that flow its kernel path only: it is counted, its first error kept for the report, and the
//! flow goes on through the workers.
//!
//! The maps are behind [`FlowMap`], so the policy is tested without root on a fake.

use linerate_dataplane::fastpath::Learned;
use linerate_ebpf::abi::{FlowEntry, FlowKey};
use std::fmt::Display;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// One ingress port's flow cache in the XDP program (`linerate_ebpf::Steering` in `fwd`).
pub trait FlowMap {
    type Error: Display;
    /// Caches `entry` for `key`.
    fn cache(&mut self, key: FlowKey, entry: FlowEntry) -> Result<(), Self::Error>;
    /// Removes entries whose packet count has not moved for `idle_ns`; returns how many.
    fn age(&mut self, now_ns: u64, idle_ns: u64) -> Result<usize, Self::Error>;
    /// Drops every entry at once (their decisions are stale).
    fn invalidate(&mut self) -> Result<(), Self::Error>;
    /// Drops the entries `stale` says yes to; returns how many.
    fn forget_where(
        &mut self,
        stale: &mut dyn FnMut(&FlowKey) -> bool,
    ) -> Result<usize, Self::Error>;
}

impl FlowMap for linerate_ebpf::Steering {
    type Error = linerate_ebpf::XdpError;
    fn cache(&mut self, key: FlowKey, entry: FlowEntry) -> Result<(), Self::Error> {
        self.cache_flow(key, entry)
    }
    fn age(&mut self, now_ns: u64, idle_ns: u64) -> Result<usize, Self::Error> {
        self.age_flows(now_ns, idle_ns)
    }
    fn invalidate(&mut self) -> Result<(), Self::Error> {
        self.invalidate_flows()
    }
    fn forget_where(
        &mut self,
        stale: &mut dyn FnMut(&FlowKey) -> bool,
    ) -> Result<usize, Self::Error> {
        self.forget_flows_where(stale)
    }
}

/// A cached flow's destination address.
pub fn key_dst(k: &FlowKey) -> std::net::IpAddr {
    if k.family == 4 {
        let [a, b, c, d, ..] = k.dst;
        std::net::IpAddr::from([a, b, c, d])
    } else {
        std::net::IpAddr::from(k.dst)
    }
}

/// The XDP program's key for a flow the workers decided.
pub fn xdp_key(l: &Learned) -> FlowKey {
    let mut key = FlowKey {
        sport_be: l.key.src_port.to_be(),
        dport_be: l.key.dst_port.to_be(),
        proto: l.key.proto,
        family: if l.ipv4 { 4 } else { 6 },
        ..FlowKey::default()
    };
    if l.ipv4 {
        // FlowKey holds IPv4 as IPv4-mapped IPv6; the program keeps it in the first 4 bytes.
        key.src[..4].copy_from_slice(&l.key.src[12..]);
        key.dst[..4].copy_from_slice(&l.key.dst[12..]);
    } else {
        key.src = l.key.src;
        key.dst = l.key.dst;
    }
    key
}

/// Max mode's control side: installs the workers' reports, ages idle entries, counts.
pub struct FlowCache {
    learned: Receiver<Learned>,
    idle: Duration,
    /// Entries installed, removed by aging, and refused by a map.
    pub cached: u64,
    pub aged: u64,
    pub refused: u64,
    /// The first refusal not yet reported (the caller prints it and takes it).
    pub last_refusal: Option<String>,
}

impl FlowCache {
    pub fn new(learned: Receiver<Learned>, idle: Duration) -> FlowCache {
        FlowCache {
            learned,
            idle,
            cached: 0,
            aged: 0,
            refused: 0,
            last_refusal: None,
        }
    }

    /// Caches every report of logic version `version` in its ingress port's map.
    pub fn install<M: FlowMap>(&mut self, maps: &mut [M], version: u64) {
        for l in self.learned.try_iter() {
            if l.version != version {
                // Decided by logic a reload replaced.
                continue;
            }
            let Some(map) = maps.get_mut(l.in_port as usize) else {
                continue;
            };
            let entry = FlowEntry {
                port: l.out_port as u32,
                dst_mac: l.dst_mac,
                src_mac: l.src_mac,
                dec_ttl: l.dec_ttl as u8,
                ..FlowEntry::default()
            };
            match map.cache(xdp_key(&l), entry) {
                Ok(()) => self.cached += 1,
                Err(e) => {
                    self.refused += 1;
                    if self.last_refusal.is_none() {
                        self.last_refusal =
                            Some(format!("caching a flow on port {}: {e}", l.in_port));
                    }
                }
            }
        }
    }

    /// Ages every map; an error is returned for the caller to report (aging goes on next time).
    pub fn age<M: FlowMap>(&mut self, maps: &mut [M], now_ns: u64) -> Result<(), String> {
        let mut first = Ok(());
        for (port, m) in maps.iter_mut().enumerate() {
            match m.age(now_ns, self.idle.as_nanos() as u64) {
                Ok(n) => self.aged += n as u64,
                Err(e) if first.is_ok() => first = Err(format!("aging flows on port {port}: {e}")),
                Err(_) => {}
            }
        }
        first
    }
}

/// Drops the entries an update made stale: every entry when `stale.all`, else those whose
/// destination lies in one of its prefixes (flows elsewhere keep their kernel path). Returns
/// how many entries were removed (`None`: all of them, by generation).
pub fn invalidate_stale<M: FlowMap>(
    maps: &mut [M],
    stale: &crate::fib::Stale,
) -> Result<Option<usize>, String> {
    if stale.all {
        return invalidate_all(maps).map(|()| None);
    }
    let mut n = 0;
    if stale.prefixes.is_empty() {
        return Ok(Some(0));
    }
    for (port, m) in maps.iter_mut().enumerate() {
        n += m
            .forget_where(&mut |k| stale.covers(key_dst(k)))
            .map_err(|e| format!("invalidating cached flows on port {port}: {e}"))?;
    }
    Ok(Some(n))
}

/// Drops every map's entries (after new logic was published).
pub fn invalidate_all<M: FlowMap>(maps: &mut [M]) -> Result<(), String> {
    for (port, m) in maps.iter_mut().enumerate() {
        m.invalidate()
            .map_err(|e| format!("invalidating cached flows on port {port}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use linerate_dataplane::shard::FlowKey as Key;
    use std::collections::HashMap;
    use std::sync::mpsc::sync_channel;

    /// A flow map in memory, with room for `room` entries; entries carry a packet count the
    /// test moves.
    #[derive(Default)]
    struct Fake {
        room: usize,
        entries: HashMap<[u8; 16], (FlowEntry, u64, u64)>,
        keys: HashMap<[u8; 16], FlowKey>,
        invalidations: usize,
    }

    impl FlowMap for Fake {
        type Error = String;
        fn cache(&mut self, key: FlowKey, entry: FlowEntry) -> Result<(), String> {
            if self.entries.len() >= self.room && !self.entries.contains_key(&key.src) {
                return Err("map full".into());
            }
            self.entries.insert(key.src, (entry, 0, 0));
            self.keys.insert(key.src, key);
            Ok(())
        }
        fn age(&mut self, now_ns: u64, idle_ns: u64) -> Result<usize, String> {
            let before = self.entries.len();
            self.entries
                .retain(|_, (_, _, seen)| now_ns.saturating_sub(*seen) < idle_ns);
            Ok(before - self.entries.len())
        }
        fn invalidate(&mut self) -> Result<(), String> {
            self.invalidations += 1;
            self.entries.clear();
            Ok(())
        }
        fn forget_where(
            &mut self,
            stale: &mut dyn FnMut(&FlowKey) -> bool,
        ) -> Result<usize, String> {
            let before = self.entries.len();
            let keys = &self.keys;
            self.entries.retain(|src, _| !stale(&keys[src]));
            Ok(before - self.entries.len())
        }
    }

    /// `n` empty maps with room for `room` entries each.
    fn maps(n: usize, room: usize) -> Vec<Fake> {
        (0..n)
            .map(|_| Fake {
                room,
                ..Fake::default()
            })
            .collect()
    }

    fn learned(src: u8, in_port: u16, version: u64) -> Learned {
        let mut key = Key::default();
        key.src[15] = src;
        Learned {
            in_port,
            out_port: 1,
            key,
            ipv4: false,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            dec_ttl: true,
            version,
        }
    }

    #[test]
    fn reports_of_replaced_logic_are_dropped_and_others_cached_on_their_port() {
        let (tx, rx) = sync_channel(16);
        let mut c = FlowCache::new(rx, Duration::from_secs(10));
        let mut maps = maps(2, 8);
        tx.send(learned(1, 0, 3)).unwrap();
        tx.send(learned(2, 1, 2)).unwrap();
        tx.send(learned(3, 1, 3)).unwrap();
        tx.send(learned(4, 9, 3)).unwrap();
        c.install(&mut maps, 3);
        assert_eq!(c.cached, 2);
        assert_eq!(maps[0].entries.len(), 1);
        assert_eq!(maps[1].entries.len(), 1);
        let (e, _, _) = maps[0].entries.values().next().unwrap();
        assert_eq!((e.port, e.dec_ttl), (1, 1));
    }

    #[test]
    fn a_full_map_costs_the_flow_its_kernel_path_only() {
        let (tx, rx) = sync_channel(16);
        let mut c = FlowCache::new(rx, Duration::from_secs(10));
        let mut maps = maps(1, 1);
        for src in 1..=3 {
            tx.send(learned(src, 0, 0)).unwrap();
        }
        c.install(&mut maps, 0);
        assert_eq!((c.cached, c.refused), (1, 2));
        assert!(c.last_refusal.take().unwrap().contains("map full"));
        // It goes on: room again, a new report is cached.
        maps[0].room = 2;
        tx.send(learned(4, 0, 0)).unwrap();
        c.install(&mut maps, 0);
        assert_eq!(c.cached, 2);
    }

    #[test]
    fn aging_and_invalidation_reach_every_port() {
        let (tx, rx) = sync_channel(16);
        let mut c = FlowCache::new(rx, Duration::from_millis(5));
        let mut maps = maps(2, 8);
        tx.send(learned(1, 0, 0)).unwrap();
        tx.send(learned(2, 1, 0)).unwrap();
        c.install(&mut maps, 0);
        c.age(&mut maps, 1_000_000).unwrap();
        assert_eq!(c.aged, 0, "not idle long enough");
        c.age(&mut maps, 10_000_000).unwrap();
        assert_eq!(c.aged, 2);
        invalidate_all(&mut maps).unwrap();
        assert!(maps.iter().all(|m| m.invalidations == 1));
    }

    #[test]
    fn a_route_change_drops_only_the_flows_inside_its_prefixes() {
        let (tx, rx) = sync_channel(16);
        let mut c = FlowCache::new(rx, Duration::from_secs(10));
        let mut maps = maps(1, 8);
        for (src, dst) in [(1, [10, 1, 2, 3]), (2, [10, 1, 9, 9]), (3, [10, 2, 0, 1])] {
            let mut l = learned(src, 0, 0);
            l.ipv4 = true;
            l.key.src = std::net::Ipv4Addr::new(192, 0, 2, src)
                .to_ipv6_mapped()
                .octets();
            l.key.dst = std::net::Ipv4Addr::from(dst).to_ipv6_mapped().octets();
            tx.send(l).unwrap();
        }
        c.install(&mut maps, 0);
        assert_eq!(maps[0].entries.len(), 3);
        let stale = crate::fib::Stale {
            all: false,
            prefixes: vec![
                "10.1.0.0/16".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        };
        assert_eq!(invalidate_stale(&mut maps, &stale), Ok(Some(2)));
        assert_eq!((maps[0].entries.len(), maps[0].invalidations), (1, 0));
        let kept = maps[0].entries.keys().next().unwrap();
        assert_eq!(&maps[0].keys[kept].dst[..4], &[10, 2, 0, 1]);
        let all = crate::fib::Stale {
            all: true,
            prefixes: vec![],
        };
        assert_eq!(invalidate_stale(&mut maps, &all), Ok(None));
        assert_eq!(maps[0].invalidations, 1);
    }

    #[test]
    fn ipv4_flow_keys_use_the_programs_layout() {
        let key = Key {
            src: std::net::Ipv4Addr::new(10, 0, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            dst: std::net::Ipv4Addr::new(10, 0, 0, 2)
                .to_ipv6_mapped()
                .octets(),
            src_port: 1000,
            dst_port: 9,
            proto: 17,
        };
        let l = Learned {
            in_port: 0,
            out_port: 1,
            key,
            ipv4: true,
            dst_mac: [0; 6],
            src_mac: [0; 6],
            dec_ttl: false,
            version: 0,
        };
        let k = xdp_key(&l);
        assert_eq!(&k.src[..4], &[10, 0, 0, 1]);
        assert_eq!(&k.src[4..], &[0; 12]);
        assert_eq!(&k.dst[..4], &[10, 0, 0, 2]);
        // Network order as the program reads it from the packet.
        assert_eq!(k.sport_be.to_ne_bytes(), 1000u16.to_be_bytes());
        assert_eq!((k.proto, k.family), (17, 4));
    }
}
