//! Traffic management cost: one enqueue and one dequeue per packet through a `Scheduler` for
//! each discipline and drop policy, 1,024 packets of mixed sizes (64 and 1500 bytes) over
//! four classes per iteration, the queues never full so every packet takes both steps.

use core::hint::black_box;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linerate_bench::{SizedPacket, sched_arrivals};
use linerate_dataplane::sched::{Discipline, DropPolicy, QueueLimit, Red, Scheduler, TokenBucket};

const PACKETS: usize = 1024;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sched::enqueue_dequeue");
    g.throughput(Throughput::Elements(PACKETS as u64));
    let arrivals = sched_arrivals(PACKETS);
    let limit = QueueLimit {
        packets: 4096,
        bytes: 64 << 20,
    };
    let red = || DropPolicy::Red(Red::new(3000.0, 4000.0, 0.1, 0.002, true, 1).unwrap());
    let cases: Vec<(&str, Discipline, DropPolicy, bool)> = vec![
        ("fcfs", Discipline::Fcfs, DropPolicy::TailDrop, false),
        (
            "wrr",
            Discipline::Wrr(vec![1, 2, 3, 4]),
            DropPolicy::TailDrop,
            false,
        ),
        (
            "drr",
            Discipline::Drr(vec![1500, 3000, 4500, 6000]),
            DropPolicy::TailDrop,
            false,
        ),
        (
            "drr+red",
            Discipline::Drr(vec![1500, 3000, 4500, 6000]),
            red(),
            false,
        ),
        ("fcfs+shaper", Discipline::Fcfs, DropPolicy::TailDrop, true),
    ];
    for (name, d, policy, shaped) in cases {
        // A shaper fast enough never to hold a packet back: its bookkeeping is what is timed.
        let shaper = shaped.then(|| TokenBucket::new(1e13, 1 << 30).unwrap());
        let mut s: Scheduler<SizedPacket> = Scheduler::new(d, policy, limit, shaper).unwrap();
        let mut now = 0u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                for &(class, len) in &arrivals {
                    let _ = s.enqueue(class, SizedPacket(len));
                }
                now += 1_000_000;
                let mut n = 0;
                while let Some(p) = s.dequeue(now) {
                    n += p.0;
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
