//! Longest-prefix-match lookups: the DIR-24-8 IPv4 table and the multibit IPv6 table, each
//! holding 16,000 seeded random routes, looked up with 1,024 seeded addresses per iteration,
//! one at a time (`lookup`) and as a slice (`lookup_batch`).
//!
//! Route lengths follow the shape of real tables (mostly /24 in IPv4; IPv6 /48s to /64s
//! under a thousand /32 allocations). Each lookup address is a random route's prefix with
//! random host bits, so every lookup walks as deep as a forwarded packet's would, and the
//! addresses are spread far wider than the caches.

use core::hint::black_box;
use core::net::{Ipv4Addr, Ipv6Addr};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linerate_bench::{splitmix64, v4_addr_in, v4_table};
use linerate_dataplane::logic::{Lpm6, NextHopId};

const ROUTES: usize = 16_000;
const LOOKUPS: usize = 1024;

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - len as u32).unwrap_or(0)
}

/// 1,000 /32 allocations in 2000::/3; under them 50 % /48, 20 % /56, 10 % /64, 10 % /33-/47,
/// and 10 % the /32s themselves.
fn v6_table(rng: &mut u64) -> (Lpm6, Vec<(u128, u8)>) {
    let global = 1u128 << 125;
    let allocations: Vec<u128> = (0..1000)
        .map(|_| (global | (splitmix64(rng) as u128) << 64) & mask6(32) & !(0b110 << 125))
        .collect();
    let mut t = Lpm6::with_max_tbl8_groups(1 << 18).expect("within the 2^22 limit");
    let mut routes = Vec::with_capacity(ROUTES);
    while t.len() < ROUTES {
        let r = splitmix64(rng);
        let len = match r % 100 {
            0..50 => 48,
            50..70 => 56,
            70..80 => 64,
            80..90 => 33 + (r >> 8) as u8 % 15,
            _ => 32,
        };
        let alloc = allocations[(r >> 16) as usize % allocations.len()];
        let low = (splitmix64(rng) as u128) << 32;
        let p = (alloc | (low & !mask6(32))) & mask6(len);
        if t.route(Ipv6Addr::from(p), len).is_none() {
            routes.push((p, len));
        }
        t.insert(Ipv6Addr::from(p), len, (r >> 24) as NextHopId % 1024)
            .expect("bench routes fit the tbl8 limit");
    }
    (t, routes)
}

const COLD_POOL: usize = 1 << 20;

/// Address sets: the same 1,024 every iteration (`routes=16000`: they and their table entries
/// stay in cache, as a set of busy flows would), or the next 1,024 of a pool of 2^20
/// (`routes=16000,addrs=1048576`: most table reads miss the caches and the TLB).
struct Addrs<T> {
    pool: Vec<T>,
    pos: usize,
}

impl<T> Addrs<T> {
    fn next(&mut self) -> &[T] {
        let s = &self.pool[self.pos..self.pos + LOOKUPS];
        self.pos = (self.pos + LOOKUPS) % self.pool.len();
        s
    }
}

fn cases<T: Copy>(generate: impl FnMut() -> T) -> [(String, Addrs<T>); 2] {
    let pool: Vec<T> = core::iter::repeat_with(generate).take(COLD_POOL).collect();
    let warm = pool[..LOOKUPS].to_vec();
    [
        (format!("routes={ROUTES}"), Addrs { pool: warm, pos: 0 }),
        (
            format!("routes={ROUTES},addrs={COLD_POOL}"),
            Addrs { pool, pos: 0 },
        ),
    ]
}

fn lpm4(c: &mut Criterion) {
    let mut rng = 0x1b4_0004;
    let (t, routes) = v4_table(&mut rng, ROUTES);
    let mut cases = cases(|| v4_addr_in(&mut rng, &routes));
    let mut out = vec![None; LOOKUPS];

    let mut g = c.benchmark_group("logic::lpm4::lookup");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for (id, addrs) in &mut cases {
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for &a in addrs.next() {
                    let nh = t.lookup(Ipv4Addr::from(black_box(a)));
                    acc = acc.wrapping_add(nh.unwrap_or(0) as u32);
                }
                acc
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("logic::lpm4::lookup_batch");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for (id, addrs) in &mut cases {
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| t.lookup_batch(black_box(addrs.next()), black_box(&mut out)))
        });
    }
    g.finish();
}

fn lpm6(c: &mut Criterion) {
    let mut rng = 0x1b4_0006;
    let (t, routes) = v6_table(&mut rng);
    let mut cases = cases(|| {
        let r = splitmix64(&mut rng);
        let (p, len) = routes[r as usize % routes.len()];
        let host = (splitmix64(&mut rng) as u128) << 64 | splitmix64(&mut rng) as u128;
        p | (host & !mask6(len))
    });
    let mut out = vec![None; LOOKUPS];

    let mut g = c.benchmark_group("logic::lpm6::lookup");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for (id, addrs) in &mut cases {
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for &a in addrs.next() {
                    let nh = t.lookup(Ipv6Addr::from(black_box(a)));
                    acc = acc.wrapping_add(nh.unwrap_or(0) as u32);
                }
                acc
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("logic::lpm6::lookup_batch");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for (id, addrs) in &mut cases {
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| t.lookup_batch(black_box(addrs.next()), black_box(&mut out)))
        });
    }
    g.finish();
}

criterion_group!(benches, lpm4, lpm6);
criterion_main!(benches);
