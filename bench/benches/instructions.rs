//! Instruction counts of the hot paths (gungraun over Valgrind's callgrind): the CI gate of
//! issue 16. Wall time on a shared 2-core VM varies by ±20% between runs; the instructions a
//! function executes do not, so a 2% rise is a real change.
//!
//! Each benchmark does a batch of work (1,024 parses, lookups, packets...) so that the fixed
//! cost of the call is noise. Inputs are built in `setup` functions, which callgrind does not
//! count. `cargo bench -p linerate-bench --bench instructions` needs `gungraun-runner` (the
//! version of the `gungraun` library) and valgrind; `scripts/instructions` installs both, runs
//! this and compares with the committed baseline.

use gungraun::{library_benchmark, library_benchmark_group, main};
use linerate_bench::splitmix64;
use linerate_dataplane::fabric::Fabric;
use linerate_dataplane::logic::{Lpm4, NextHopId};
use linerate_dataplane::sched::{Discipline, DropPolicy, Packet, QueueLimit, Scheduler};
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::synthetic::{self as pipeline, PipelineConfig};
use linerate_dataplane::wire::parse_headers;
use std::hint::black_box;
use std::net::Ipv4Addr;

const N: usize = 1024;

/// 1,024 frames: UDP and TCP over IPv4 and IPv6 (the pipeline's own templates, varied).
fn frames() -> Vec<Vec<u8>> {
    let cfg = PipelineConfig::default();
    let (_, dsts) = pipeline::build_logic(&cfg).expect("routes");
    let t = pipeline::templates(&cfg, &dsts);
    (0..N).map(|i| t[i % t.len()].clone()).collect()
}

#[library_benchmark]
#[bench::frames_1024(setup = frames)]
fn wire_parse(frames: Vec<Vec<u8>>) -> usize {
    let mut n = 0;
    for f in &frames {
        if let Ok(h) = parse_headers(black_box(f)) {
            n += h.l4_offset as usize;
        }
    }
    n
}

/// A table of 16,000 seeded routes (mostly /24s) and 1,024 addresses inside them.
fn lpm_table() -> (Lpm4, Vec<u32>) {
    let mut rng = 0x1b4_0004u64;
    let mut t = Lpm4::new();
    let mut routes = Vec::new();
    while t.len() < 16_000 {
        let r = splitmix64(&mut rng);
        let len = match r % 100 {
            0..50 => 24,
            50..90 => 16 + (r >> 8) as u8 % 8,
            _ => 25 + (r >> 8) as u8 % 8,
        };
        let p = (r >> 32) as u32 & (u32::MAX << (32 - len));
        t.insert(Ipv4Addr::from(p), len, (r >> 16) as NextHopId % 1024)
            .expect("fits");
        routes.push((p, len));
    }
    let addrs = (0..N)
        .map(|_| {
            let r = splitmix64(&mut rng);
            let (p, len) = routes[r as usize % routes.len()];
            p | ((r >> 32) as u32 & !(u32::MAX << (32 - len)))
        })
        .collect();
    (t, addrs)
}

#[library_benchmark]
#[bench::routes_16000(setup = lpm_table)]
fn lpm4_lookup(input: (Lpm4, Vec<u32>)) -> u64 {
    let (t, addrs) = input;
    let mut sum = 0u64;
    for &a in &addrs {
        sum += t.lookup_u32(black_box(a)).map_or(0, u64::from);
    }
    sum
}

/// A fabric over 8 destinations and 1,024 seeded destinations for its packets.
fn fabric_input() -> (Fabric, Vec<u32>) {
    let mut seed = 0x5eed;
    let dests = (0..N).map(|_| (splitmix64(&mut seed) % 8) as u32).collect();
    (Fabric::new(8, N), dests)
}

#[library_benchmark]
#[bench::dests_8(setup = fabric_input)]
fn fabric_dispatch(input: (Fabric, Vec<u32>)) -> usize {
    let (mut fabric, dests) = input;
    fabric.push_batch(black_box(&dests));
    let mut n = 0;
    for &d in fabric.active() {
        n += fabric.slots(d as usize).count();
    }
    fabric.clear();
    n
}

/// One in-memory worker (TTL decrement, LPM over the pipeline's routes, the fabric) ready to
/// run rounds of 64 frames.
fn worker() -> linerate_dataplane::worker::Worker<pipeline::PipelineLogic> {
    let cfg = PipelineConfig {
        workers: 1,
        batch: 64,
        mapping: Mapping::Concurrent,
        ..PipelineConfig::default()
    };
    let (logic, dsts) = pipeline::build_logic(&cfg).expect("routes");
    let templates = pipeline::templates(&cfg, &dsts);
    let mut w =
        pipeline::build_worker(&cfg, 0, logic, &templates, vec![None], vec![]).expect("worker");
    // Warm: the first rounds fill pools and caches the steady state does not repeat.
    for _ in 0..4 {
        w.poll_once().expect("in-memory ports do not fail");
    }
    w
}

#[library_benchmark]
#[bench::rounds_16_of_64(setup = worker)]
fn worker_rounds(mut w: linerate_dataplane::worker::Worker<pipeline::PipelineLogic>) -> usize {
    let mut n = 0;
    for _ in 0..16 {
        n += w.poll_once().expect("in-memory ports do not fail");
    }
    n
}

struct P(u32);

impl Packet for P {
    fn wire_len(&self) -> u32 {
        self.0
    }
}

/// A scheduler of `d` over four classes and 1,024 seeded arrivals (64 or 1,500 bytes).
fn sched_input(d: Discipline) -> (Scheduler<P>, Vec<(usize, u32)>) {
    let mut rng = 7u64;
    let arrivals = (0..N)
        .map(|_| {
            let r = splitmix64(&mut rng);
            ((r % 4) as usize, if r & 16 == 0 { 64 } else { 1500 })
        })
        .collect();
    let limit = QueueLimit {
        packets: 4096,
        bytes: 64 << 20,
    };
    let s = Scheduler::new(d, DropPolicy::TailDrop, limit, None).expect("valid");
    (s, arrivals)
}

#[library_benchmark]
#[bench::fcfs(args = (Discipline::Fcfs), setup = sched_input)]
#[bench::drr(args = (Discipline::Drr(vec![1500, 3000, 4500, 6000])), setup = sched_input)]
#[bench::wrr(args = (Discipline::Wrr(vec![1, 2, 3, 4])), setup = sched_input)]
fn sched_enqueue_dequeue(input: (Scheduler<P>, Vec<(usize, u32)>)) -> u32 {
    let (mut s, arrivals) = input;
    for &(class, len) in &arrivals {
        let _ = s.enqueue(class, P(len));
    }
    let mut n = 0;
    while let Some(p) = s.dequeue(1_000_000) {
        n += p.0;
    }
    n
}

/// 1,024 SOCKS5 CONNECT requests: IPv4, IPv6 and domain names.
fn socks_requests() -> Vec<Vec<u8>> {
    let v4 = [5u8, 1, 0, 1, 192, 0, 2, 7, 0x1f, 0x90].to_vec();
    let v6 = [
        &[5u8, 1, 0, 4][..],
        &[0x20, 1, 0xd, 0xb8],
        &[0; 11],
        &[1, 1, 0xbb],
    ]
    .concat();
    let name = [&[5u8, 1, 0, 3, 11][..], b"example.org", &[0, 80]].concat();
    (0..N).map(|i| [&v4, &v6, &name][i % 3].clone()).collect()
}

#[library_benchmark]
#[bench::requests_1024(setup = socks_requests)]
fn socks5_parse(reqs: Vec<Vec<u8>>) -> usize {
    let mut ok = 0;
    for r in &reqs {
        if let Ok(Some(_)) = linerate_relay::proto::parse_request(black_box(r)) {
            ok += 1;
        }
    }
    ok
}

/// A controller diff of 100 route changes, encoded.
fn diff() -> (linerate_proto::ControllerMsg, Vec<u8>) {
    use linerate_proto::{Change, ControllerMsg, Mac, Route};
    let changes = (0..100u64)
        .map(|id| {
            Change::Route(Route {
                id,
                prefix: format!("10.{}.{}.0/24", id / 256, id % 256)
                    .parse()
                    .unwrap(),
                port: "eth0".into(),
                next_hop: Mac([2, 0, 0, 0, 0, 1]),
                weight: 1,
            })
        })
        .collect();
    let msg = ControllerMsg::Diff(changes);
    let bytes = linerate_proto::encode(&msg).expect("encodes");
    (msg, bytes)
}

#[library_benchmark]
#[bench::diff_of_100_routes(setup = diff)]
fn proto_codec(input: (linerate_proto::ControllerMsg, Vec<u8>)) -> usize {
    let (msg, bytes) = input;
    let out = linerate_proto::encode(black_box(&msg)).expect("encodes");
    let back: linerate_proto::ControllerMsg =
        linerate_proto::decode(black_box(&bytes)).expect("decodes");
    out.len() + matches!(back, linerate_proto::ControllerMsg::Diff(_)) as usize
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks = wire_parse, lpm4_lookup, fabric_dispatch, worker_rounds, sched_enqueue_dequeue,
        socks5_parse, proto_codec
);

main!(library_benchmark_groups = hot_paths);
