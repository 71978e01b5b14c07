//! What `linerate sink` computes from the stamps of received frames: per flow (a generator
//! stream and flow), packets, loss, reordering and duplicates from the gapless sequence
//! numbers, and one-way latency percentiles from the send times (same host clock).
//!
//! Pure data structures: no I/O, no clock; the caller passes receive times. Recording a
//! packet never allocates once its flow has been seen.

use hashbrown::HashMap;

/// Loss and order bookkeeping of one flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// The sequence number expected next (one past the highest seen).
    next: u64,
    /// Bit i set: sequence `next - 1 - i` has been seen (a window of the last 64).
    seen: u64,
    pub received: u64,
    /// Sequence numbers skipped and not (yet) seen.
    pub lost: u64,
    /// Arrived after a higher sequence number (counted out of `lost` again).
    pub reordered: u64,
    /// Seen twice (within the window).
    pub duplicates: u64,
    /// Too old to tell (more than 64 behind): counted as reordered, loss unchanged.
    pub stale: u64,
}

impl FlowStats {
    fn record(&mut self, seq: u64) {
        self.received += 1;
        if seq >= self.next {
            let gap = seq - self.next;
            self.lost += gap;
            self.seen = if gap + 1 >= 64 {
                0
            } else {
                self.seen << (gap + 1)
            };
            self.seen |= 1;
            self.next = seq + 1;
            return;
        }
        let behind = self.next - 1 - seq;
        if behind >= 64 {
            self.stale += 1;
            self.reordered += 1;
        } else if self.seen & (1 << behind) != 0 {
            self.duplicates += 1;
        } else {
            self.seen |= 1 << behind;
            self.reordered += 1;
            self.lost -= 1;
        }
    }
}

/// Log-linear histogram of nanosecond values: 32 sub-buckets per power of two, so any
/// percentile is within about 3% of the true value, from 1 ns to about 584 years.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

const SUB: u32 = 5; // 2^5 sub-buckets per power of two

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (64 << SUB) as usize].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < (1 << SUB) {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB;
        (((shift + 1) << SUB) + ((v >> shift) as u32 & ((1 << SUB) - 1))) as usize
    }

    /// The smallest value that falls into bucket `b` (what percentiles report).
    fn low(b: usize) -> u64 {
        let b = b as u32;
        if b < (1 << SUB) {
            return b as u64;
        }
        let shift = (b >> SUB) - 1;
        (((1 << SUB) | (b & ((1 << SUB) - 1))) as u64) << shift
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value below which a fraction `q` (0..=1) of the samples lie; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::low(b).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }
}

/// Everything a sink accumulates.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    flows: HashMap<(u8, u16), FlowStats>,
    pub latency: Histogram,
    pub bytes: u64,
    /// Frames that were not ours (no stamp, wrong port): counted, not analysed.
    pub foreign: u64,
    /// Stamps whose send time is after the receive time (clock trouble): not in `latency`.
    pub clock_skew: u64,
    /// Receive times of the first and the last of our frames (0: none yet).
    pub first_rx_ns: u64,
    pub last_rx_ns: u64,
}

/// Totals over all flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkTotals {
    pub flows: usize,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
}

impl SinkStats {
    /// Room for `flows` flows before the table has to grow.
    pub fn with_flows(flows: usize) -> SinkStats {
        SinkStats {
            flows: HashMap::with_capacity(flows),
            ..SinkStats::default()
        }
    }

    /// One of our frames: its stream, flow, sequence number and send time, received at
    /// `rx_ns` on the same clock.
    pub fn record(
        &mut self,
        stream: u8,
        flow: u16,
        seq: u64,
        tx_ns: u64,
        rx_ns: u64,
        bytes: usize,
    ) {
        self.flows.entry((stream, flow)).or_default().record(seq);
        self.bytes += bytes as u64;
        if self.first_rx_ns == 0 {
            self.first_rx_ns = rx_ns;
        }
        self.last_rx_ns = rx_ns;
        match rx_ns.checked_sub(tx_ns) {
            Some(d) => self.latency.record(d),
            None => self.clock_skew += 1,
        }
    }

    /// Seconds from the first to the last of our frames, and the bit rate over that span.
    pub fn active(&self) -> (f64, f64) {
        let span = self.last_rx_ns.saturating_sub(self.first_rx_ns) as f64 / 1e9;
        let bps = if span > 0.0 {
            self.bytes as f64 * 8.0 / span
        } else {
            0.0
        };
        (span, bps)
    }

    pub fn flow(&self, stream: u8, flow: u16) -> Option<&FlowStats> {
        self.flows.get(&(stream, flow))
    }

    pub fn totals(&self) -> SinkTotals {
        let mut t = SinkTotals {
            flows: self.flows.len(),
            ..SinkTotals::default()
        };
        for f in self.flows.values() {
            t.received += f.received;
            t.lost += f.lost;
            t.reordered += f.reordered;
            t.duplicates += f.duplicates;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(seqs: &[u64]) -> FlowStats {
        let mut f = FlowStats::default();
        for &s in seqs {
            f.record(s);
        }
        f
    }

    #[test]
    fn in_order_has_no_loss() {
        let f = flow(&[0, 1, 2, 3]);
        assert_eq!(
            (f.received, f.lost, f.reordered, f.duplicates),
            (4, 0, 0, 0)
        );
    }

    #[test]
    fn gaps_are_loss_until_the_packet_turns_up() {
        let f = flow(&[0, 3, 4]);
        assert_eq!((f.lost, f.reordered), (2, 0));
        let f = flow(&[0, 3, 4, 1]);
        assert_eq!((f.lost, f.reordered, f.duplicates), (1, 1, 0));
        let f = flow(&[0, 3, 1, 1, 2]);
        assert_eq!((f.lost, f.reordered, f.duplicates), (0, 2, 1));
    }

    #[test]
    fn duplicates_of_the_latest_and_loss_at_the_start() {
        let f = flow(&[5, 5, 6]);
        assert_eq!((f.lost, f.duplicates), (5, 1));
    }

    #[test]
    fn far_behind_is_stale_reordering() {
        let mut s: Vec<u64> = (0..100).collect();
        s.remove(10);
        s.push(10);
        let f = flow(&s);
        assert_eq!(
            (f.lost, f.reordered, f.stale),
            (1, 1, 1),
            "89 behind: cannot tell, loss stays"
        );
        let mut s: Vec<u64> = (0..60).collect();
        s.remove(10);
        s.push(10);
        let f = flow(&s);
        assert_eq!((f.lost, f.reordered, f.stale), (0, 1, 0));
    }

    #[test]
    fn histogram_quantiles_within_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 50_000f64), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                (got - exact).abs() / exact < 0.035,
                "q{q}: {got} vs {exact}"
            );
        }
        let top = h.quantile(1.0).unwrap();
        assert!(
            top <= h.max() && top as f64 >= h.max() as f64 * 0.965,
            "{top}"
        );
        assert_eq!(Histogram::default().quantile(0.5), None);
        for v in [0u64, 1, 31, 32, 33, 1000, u64::MAX] {
            let b = Histogram::bucket(v);
            assert!(Histogram::low(b) <= v, "{v}");
            assert!(b < 64 << SUB);
        }
    }

    #[test]
    fn sink_totals_and_skew() {
        let mut s = SinkStats::with_flows(4);
        s.record(0, 1, 0, 100, 150, 60);
        s.record(0, 1, 2, 200, 260, 60);
        s.record(1, 1, 0, 300, 290, 60);
        let t = s.totals();
        assert_eq!((t.flows, t.received, t.lost), (2, 3, 1));
        assert_eq!(s.clock_skew, 1);
        assert_eq!(s.latency.count(), 2);
        assert_eq!(s.bytes, 180);
    }
}
