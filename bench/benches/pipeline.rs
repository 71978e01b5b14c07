//! The whole in-memory packet core on one core: a worker receives a batch of 64-byte frames
//! from its template source, parses, decrements TTL (incremental checksum), routes through a
//! 16,000-route DIR-24-8 table, rewrites MACs and dispatches through the fabric to four
//! counting sinks. One iteration is one `poll_once`: one batch in, one batch out.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linerate_bench::pipeline_worker;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline::ttl_lpm_fabric");
    for (frame_len, batch) in [(60usize, 64usize), (60, 32), (60, 256), (1514, 64)] {
        let mut w = pipeline_worker(frame_len, batch);
        g.throughput(Throughput::Elements(batch as u64));
        let id = BenchmarkId::new("one_core", format!("len={},batch={batch}", frame_len + 4));
        g.bench_function(id, |b| {
            b.iter(|| {
                let n = w.poll_once().expect("in-memory ports do not fail");
                assert_eq!(n, batch);
            })
        });
        let report = w.finish();
        assert!(report.frames_accounted());
        assert_eq!(report.counts.dropped(), 0, "{:?}", report.counts);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
