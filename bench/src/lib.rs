//! Shared helpers for linerate's benchmarks: seeded inputs that every bench builds the same way.
#![deny(unsafe_code)]

/// The seeded generator every bench draws inputs from (the dataplane's own, so benches and the
/// pipeline see the same sequences).
pub use linerate_dataplane::synthetic::splitmix64;

use core::net::Ipv4Addr;
use linerate_dataplane::logic::{Lpm4, NextHopId};
use linerate_dataplane::sched::Packet;
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::synthetic::{self as pipeline, PipelineConfig, PipelineLogic};
use linerate_dataplane::worker::Worker;

/// The netmask of an IPv4 prefix length.
pub fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - len as u32).unwrap_or(0)
}

/// `routes` seeded IPv4 routes shaped like a real table (50% /24, 40% /16-/23, 10% /25-/32),
/// and their distinct prefixes.
pub fn v4_table(rng: &mut u64, routes: usize) -> (Lpm4, Vec<(u32, u8)>) {
    let mut t = Lpm4::new();
    let mut prefixes = Vec::with_capacity(routes);
    while t.len() < routes {
        let r = splitmix64(rng);
        let len = match r % 100 {
            0..50 => 24,
            50..90 => 16 + (r >> 8) as u8 % 8,
            _ => 25 + (r >> 8) as u8 % 8,
        };
        let p = (r >> 32) as u32 & mask4(len);
        if t.route(Ipv4Addr::from(p), len).is_none() {
            prefixes.push((p, len));
        }
        t.insert(Ipv4Addr::from(p), len, (r >> 16) as NextHopId % 1024)
            .expect("bench routes fit the default tbl8 limit");
    }
    (t, prefixes)
}

/// An address inside a random one of `prefixes`, with random host bits.
pub fn v4_addr_in(rng: &mut u64, prefixes: &[(u32, u8)]) -> u32 {
    let r = splitmix64(rng);
    let (p, len) = prefixes[r as usize % prefixes.len()];
    p | ((r >> 32) as u32 & !mask4(len))
}

/// A packet the schedulers see as its wire length alone.
pub struct SizedPacket(pub u32);

impl Packet for SizedPacket {
    fn wire_len(&self) -> u32 {
        self.0
    }
}

/// `n` seeded arrivals over four classes, each 64 or 1,500 bytes: (class, length).
pub fn sched_arrivals(n: usize) -> Vec<(usize, u32)> {
    let mut rng = 7u64;
    (0..n)
        .map(|_| {
            let r = splitmix64(&mut rng);
            ((r % 4) as usize, if r & 16 == 0 { 64 } else { 1500 })
        })
        .collect()
}

/// One in-memory worker of the pipeline (TTL decrement, LPM over the pipeline's routes, the
/// fabric) over frames of `frame_len` in batches of `batch`.
pub fn pipeline_worker(frame_len: usize, batch: usize) -> Worker<PipelineLogic> {
    let cfg = PipelineConfig {
        workers: 1,
        batch,
        frame_len,
        mapping: Mapping::Concurrent,
        ..PipelineConfig::default()
    };
    let (logic, dsts) = pipeline::build_logic(&cfg).expect("routes");
    let templates = pipeline::templates(&cfg, &dsts);
    pipeline::build_worker(&cfg, 0, logic, &templates, vec![None], vec![]).expect("worker")
}
