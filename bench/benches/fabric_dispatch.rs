//! Fabric dispatch of a 1024-packet batch to 1..1000 destination ports: our two-phase
//! (mSwitch) fabric against VALE's algorithm, which scans the whole batch once per port.
//!
//! Both deliver the same way — each packet's descriptor is written into its destination's
//! ring and each visited ring publishes its tail once — so the difference is only how
//! destinations are found. Destinations are uniform random (seeded).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linerate_bench::splitmix64;
use linerate_dataplane::fabric::Fabric;
use std::hint::black_box;

const BATCH: usize = 1024;
const RING: usize = 256;

/// A destination port's transmit ring, reduced to what delivery touches.
struct Ring {
    slots: Box<[u64; RING]>,
    tail: usize,
    published: usize,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: Box::new([0; RING]),
            tail: 0,
            published: 0,
        }
    }
    #[inline]
    fn push(&mut self, desc: u64) {
        self.slots[self.tail & (RING - 1)] = desc;
        self.tail += 1;
    }
    #[inline]
    fn publish(&mut self) {
        self.published = self.tail;
    }
}

fn inputs(ports: usize) -> (Vec<u64>, Vec<u32>) {
    let mut seed = 0x5eed ^ ports as u64;
    let descs = (0..BATCH as u64).map(|i| i * 2048).collect();
    let dests = (0..BATCH)
        .map(|_| (splitmix64(&mut seed) % ports as u64) as u32)
        .collect();
    (descs, dests)
}

fn mswitch(fabric: &mut Fabric, rings: &mut [Ring], descs: &[u64], dests: &[u32]) {
    fabric.push_batch(dests);
    for &d in fabric.active() {
        let ring = &mut rings[d as usize];
        for s in fabric.slots(d as usize) {
            ring.push(descs[s]);
        }
        ring.publish();
    }
    fabric.clear();
}

fn vale(rings: &mut [Ring], descs: &[u64], dests: &[u32]) {
    for (d, ring) in rings.iter_mut().enumerate() {
        let mut any = false;
        for (i, &dst) in dests.iter().enumerate() {
            if dst as usize == d {
                ring.push(descs[i]);
                any = true;
            }
        }
        if any {
            ring.publish();
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fabric::dispatch");
    g.throughput(Throughput::Elements(BATCH as u64));
    for ports in [1usize, 4, 16, 64, 250, 1000] {
        let (descs, dests) = inputs(ports);
        let mut rings: Vec<Ring> = (0..ports).map(|_| Ring::new()).collect();
        let mut fabric = Fabric::new(ports, BATCH);
        g.bench_function(BenchmarkId::new("mswitch", format!("ports={ports}")), |b| {
            b.iter(|| {
                mswitch(
                    &mut fabric,
                    &mut rings,
                    black_box(&descs),
                    black_box(&dests),
                )
            })
        });
        g.bench_function(BenchmarkId::new("vale", format!("ports={ports}")), |b| {
            b.iter(|| vale(&mut rings, black_box(&descs), black_box(&dests)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
