//! The in-memory pipeline: the `linerate pipeline` job.
//!
//! Each worker gets a [`TemplateSource`] port that produces prebuilt frames as fast as the
//! worker takes them and [`CountingSink`] ports that count and recycle what is sent to them;
//! in between runs the real dataplane — parse, shard, TTL decrement, LPM routing, fabric. No
//! NIC or kernel is involved, so the figure is the cost of the packet core itself.

use crate::batch::Batch;
use crate::counters::Counts;
use crate::frame::BufferPool;
use crate::port::{Port, PortError};
use crate::verdict::DropReason;
use crate::worker::WorkerReport;
use std::fmt::Write as _;
use std::time::Duration;

/// A port that receives an endless stream of copies of prebuilt frames, cycling through them.
pub struct TemplateSource {
    name: String,
    /// All templates back to back; `spans[i]` is template `i`'s range.
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
    next: usize,
    sent: u64,
    /// Stop after this many frames (`u64::MAX`: never).
    limit: u64,
}

impl TemplateSource {
    /// A source cycling through `templates`, starting at `start`.
    pub fn new(name: impl Into<String>, templates: &[Vec<u8>], start: usize) -> TemplateSource {
        let mut bytes = Vec::new();
        let mut spans = Vec::with_capacity(templates.len());
        for t in templates {
            spans.push((bytes.len(), t.len()));
            bytes.extend_from_slice(t);
        }
        let next = if spans.is_empty() { 0 } else { start % spans.len() };
        TemplateSource {
            name: name.into(),
            bytes,
            spans,
            next,
            sent: 0,
            limit: u64::MAX,
        }
    }

    /// Produce at most `limit` frames in all.
    pub fn with_limit(mut self, limit: u64) -> TemplateSource {
        self.limit = limit;
        self
    }
}

impl Port for TemplateSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        if self.spans.is_empty() {
            return Ok(0);
        }
        let want = (batch.room() as u64).min(self.limit - self.sent) as usize;
        let mut n = 0;
        while n < want {
            let Some(mut f) = pool.alloc() else { break };
            let (off, len) = self.spans[self.next];
            pool.fill(&mut f, &self.bytes[off..off + len]);
            self.next += 1;
            if self.next == self.spans.len() {
                self.next = 0;
            }
            if let Err(f) = batch.push(f) {
                pool.free(f);
                break;
            }
            n += 1;
        }
        self.sent += n as u64;
        Ok(n)
    }

    fn send(&mut self, _pool: &mut BufferPool, _batch: &mut Batch) -> Result<usize, PortError> {
        // A source has no transmit side: it takes nothing, so the worker counts `tx_full`.
        Ok(0)
    }

    fn held(&self) -> usize {
        0
    }

    fn release(&mut self, _pool: &mut BufferPool) {}
}

/// A port that accepts everything sent to it, counts it, and frees the frames at once.
pub struct CountingSink {
    name: String,
    pub frames: u64,
    pub bytes: u64,
}

impl CountingSink {
    pub fn new(name: impl Into<String>) -> CountingSink {
        CountingSink {
            name: name.into(),
            frames: 0,
            bytes: 0,
        }
    }
}

impl Port for CountingSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, _pool: &mut BufferPool, _batch: &mut Batch) -> Result<usize, PortError> {
        Ok(0)
    }

    fn send(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let n = batch.len();
        for f in batch.drain() {
            self.bytes += f.len() as u64;
            pool.free(f);
        }
        self.frames += n as u64;
        Ok(n)
    }

    fn held(&self) -> usize {
        0
    }

    fn release(&mut self, _pool: &mut BufferPool) {}
}

/// splitmix64: the seeded generator behind every "random" input of the pipeline, so runs are
/// reproducible.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whole-run results of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    pub elapsed: Duration,
    pub workers: Vec<WorkerReport>,
}

impl PipelineReport {
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for w in &self.workers {
            t.add(&w.counts);
        }
        t
    }

    fn mpps(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// The final table: one row per worker and a total, drops by reason.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
            "worker", "rx Mpps", "tx Mpps", "ho out", "ho in", "dropped", "frames ok"
        );
        let row = |s: &mut String, name: &str, c: &Counts, ok: &str| {
            let _ = writeln!(
                s,
                "{:<8} {:>10.2} {:>10.2} {:>10} {:>10} {:>12} {:>12}",
                name,
                self.mpps(c.rx),
                self.mpps(c.tx),
                c.handoff_out,
                c.handoff_in,
                c.dropped(),
                ok
            );
        };
        for w in &self.workers {
            let ok = if w.frames_accounted() { "yes" } else { "NO" };
            row(&mut s, &format!("w{}", w.id), &w.counts, ok);
        }
        let t = self.total();
        let all_ok = self.workers.iter().all(WorkerReport::frames_accounted);
        row(&mut s, "total", &t, if all_ok { "yes" } else { "NO" });
        let _ = writeln!(s, "drops by reason:");
        for r in DropReason::ALL {
            let n = t.drops_of(r);
            if n > 0 {
                let _ = writeln!(s, "  {:<16} {n}", r.name());
            }
        }
        if t.dropped() == 0 {
            let _ = writeln!(s, "  (none)");
        }
        s
    }

    /// The same results as one JSON object.
    pub fn json(&self) -> String {
        let counts = |c: &Counts| {
            let mut d = String::from("{");
            for (i, r) in DropReason::ALL.iter().enumerate() {
                let _ = write!(d, "{}\"{}\":{}", if i > 0 { "," } else { "" }, r.name(), c.drops_of(*r));
            }
            d.push('}');
            format!(
                "{{\"rx\":{},\"tx\":{},\"rx_bytes\":{},\"tx_bytes\":{},\"handoff_out\":{},\"handoff_in\":{},\"rx_mpps\":{:.3},\"tx_mpps\":{:.3},\"drops\":{}}}",
                c.rx,
                c.tx,
                c.rx_bytes,
                c.tx_bytes,
                c.handoff_out,
                c.handoff_in,
                self.mpps(c.rx),
                self.mpps(c.tx),
                d
            )
        };
        let workers: Vec<String> = self
            .workers
            .iter()
            .map(|w| {
                format!(
                    "{{\"id\":{},\"frames_accounted\":{},\"handoff_pending\":{},\"counts\":{}}}",
                    w.id,
                    w.frames_accounted(),
                    w.handoff_pending,
                    counts(&w.counts)
                )
            })
            .collect();
        format!(
            "{{\"elapsed_s\":{:.3},\"total\":{},\"workers\":[{}]}}",
            self.elapsed.as_secs_f64(),
            counts(&self.total()),
            workers.join(",")
        )
    }
}

/// One live progress line from two readings `dt` apart.
pub fn live_line(now: &Counts, before: &Counts, dt: Duration) -> String {
    let d = now.since(before);
    let s = dt.as_secs_f64().max(1e-9);
    let mut line = format!(
        "rx {:>7.2} Mpps  tx {:>7.2} Mpps  {:>6.2} Gbps  handoff {:>6.2} Mpps  drops {:>8}",
        d.rx as f64 / s / 1e6,
        d.tx as f64 / s / 1e6,
        d.tx_bytes as f64 * 8.0 / s / 1e9,
        d.handoff_out as f64 / s / 1e6,
        d.dropped()
    );
    for r in DropReason::ALL {
        let n = d.drops_of(r);
        if n > 0 {
            let _ = write!(line, " {}={n}", r.name());
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_cycles_and_respects_limit() {
        let mut pool = BufferPool::new(64, 128).unwrap();
        let t = vec![vec![1u8; 60], vec![2u8; 70]];
        let mut src = TemplateSource::new("src", &t, 1).with_limit(5);
        let mut b = Batch::new(4);
        assert_eq!(src.recv(&mut pool, &mut b).unwrap(), 4);
        let firsts: Vec<(u8, usize)> = b.as_slice().iter().map(|f| (pool.data(f)[0], f.len())).collect();
        assert_eq!(firsts, [(2, 70), (1, 60), (2, 70), (1, 60)]);
        let mut sink = CountingSink::new("sink");
        assert_eq!(sink.send(&mut pool, &mut b).unwrap(), 4);
        assert_eq!(src.recv(&mut pool, &mut b).unwrap(), 1);
        assert_eq!(src.recv(&mut pool, &mut b).unwrap(), 0, "limit reached");
        sink.send(&mut pool, &mut b).unwrap();
        assert_eq!((sink.frames, sink.bytes), (5, 4 * 65 + 70));
        assert_eq!(pool.available(), 64);
    }
}
