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
use linerate_bench::{
    SizedPacket, pipeline_worker, sched_arrivals, splitmix64, v4_addr_in, v4_table,
};
use linerate_dataplane::fabric::Fabric;
use linerate_dataplane::logic::Lpm4;
use linerate_dataplane::sched::{Discipline, DropPolicy, QueueLimit, Scheduler};
use linerate_dataplane::synthetic::{self as pipeline, PipelineConfig, PipelineLogic};
use linerate_dataplane::wire::parse_headers;
use linerate_dataplane::worker::Worker;
use std::hint::black_box;

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
    let (t, prefixes) = v4_table(&mut rng, 16_000);
    let addrs = (0..N).map(|_| v4_addr_in(&mut rng, &prefixes)).collect();
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

/// One in-memory worker ready to run rounds of 64 frames.
fn worker() -> Worker<PipelineLogic> {
    let mut w = pipeline_worker(60, 64);
    // Warm: the first rounds fill pools and caches the steady state does not repeat.
    for _ in 0..4 {
        w.poll_once().expect("in-memory ports do not fail");
    }
    w
}

#[library_benchmark]
#[bench::rounds_16_of_64(setup = worker)]
fn worker_rounds(mut w: Worker<PipelineLogic>) -> usize {
    let mut n = 0;
    for _ in 0..16 {
        n += w.poll_once().expect("in-memory ports do not fail");
    }
    n
}

/// A scheduler of `d` over four classes and 1,024 seeded arrivals (64 or 1,500 bytes).
fn sched_input(d: Discipline) -> (Scheduler<SizedPacket>, Vec<(usize, u32)>) {
    let limit = QueueLimit {
        packets: 4096,
        bytes: 64 << 20,
    };
    let s = Scheduler::new(d, DropPolicy::TailDrop, limit, None).expect("valid");
    (s, sched_arrivals(N))
}

#[library_benchmark]
#[bench::fcfs(args = (Discipline::Fcfs), setup = sched_input)]
#[bench::drr(args = (Discipline::Drr(vec![1500, 3000, 4500, 6000])), setup = sched_input)]
#[bench::wrr(args = (Discipline::Wrr(vec![1, 2, 3, 4])), setup = sched_input)]
fn sched_enqueue_dequeue(input: (Scheduler<SizedPacket>, Vec<(usize, u32)>)) -> u32 {
    let (mut s, arrivals) = input;
    for &(class, len) in &arrivals {
        let _ = s.enqueue(class, SizedPacket(len));
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
