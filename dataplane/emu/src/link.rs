//! One direction of an emulated link, as a pure data structure on a clock passed in:
//!
//! ```text
//! enqueue ─> class queues + drop policy (sched::Scheduler)
//!        ─> serializer at the link rate (virtual time: each packet starts when the previous
//!           one has left and it has arrived, so a late worker loses no rate)
//!        ─> delay line (delay ± jitter; a FIFO keeping order, or a heap when reordering is
//!           asked for)
//!        ─> loss (Bernoulli or Gilbert-Elliott)
//!        ─> delivered to the peer
//! ```
//!
//! [`LinkDir::poll`] moves what is due at `now` and says when it next has something to do,
//! so one worker can run thousands of links from one timer heap and one clock read per round.
//! Nothing here allocates once its queues have grown to their working size, and nothing
//! reads a clock.

use crate::topo::{DropSpec, LinkParams, Loss, SchedSpec};
use linerate_dataplane::sched::{
    ClassRule, Classifier, Discipline, DropCause, DropPolicy, Packet, QueueLimit, Red, Scheduler,
};
use std::collections::{BinaryHeap, VecDeque};

/// Why a link direction did not deliver a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Its class queue was full.
    Queue,
    /// RED dropped it early.
    Red,
    /// The loss model lost it.
    Loss,
    /// The link is down.
    Down,
}

/// What one direction did, as plain counters (the worker publishes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub enqueued: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub drop_queue: u64,
    pub drop_red: u64,
    pub drop_loss: u64,
    pub drop_down: u64,
    /// Packets delivered later than due by more than [`LATE_NS`] (the worker could not keep up).
    pub late: u64,
    /// The largest lateness seen, ns.
    pub max_late_ns: u64,
}

/// Lateness that counts as missing the link's settings: the accuracy target's floor.
pub const LATE_NS: u64 = 50_000;

struct Queued<F> {
    frame: F,
    len: u32,
    weight: u32,
    arrived_ns: u64,
}

impl<F> Packet for Queued<F> {
    fn wire_len(&self) -> u32 {
        self.len
    }
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// Where a packet queues on a direction: its class, and its flow's weight (`wfq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub class: usize,
    pub weight: u32,
}

impl Class {
    /// Class 0, weight 1: what a direction without classes puts every packet in.
    pub const ZERO: Class = Class {
        class: 0,
        weight: 1,
    };
}

/// A packet in flight: due at `release_ns`; `seq` keeps equal times in sending order.
struct Flight<F> {
    release_ns: u64,
    seq: u64,
    frame: F,
    len: u32,
}

impl<F> PartialEq for Flight<F> {
    fn eq(&self, o: &Self) -> bool {
        (self.release_ns, self.seq) == (o.release_ns, o.seq)
    }
}
impl<F> Eq for Flight<F> {}
impl<F> PartialOrd for Flight<F> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<F> Ord for Flight<F> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // A max-heap of reversed keys: the earliest release on top.
        (o.release_ns, o.seq).cmp(&(self.release_ns, self.seq))
    }
}

/// The delay line: order kept (every release at least the previous one) in a FIFO, or free
/// reordering in a heap.
enum Line<F> {
    Fifo(VecDeque<Flight<F>>),
    Heap(BinaryHeap<Flight<F>>),
}

impl<F> Line<F> {
    fn head_ns(&self) -> Option<u64> {
        match self {
            Line::Fifo(q) => q.front().map(|f| f.release_ns),
            Line::Heap(h) => h.peek().map(|f| f.release_ns),
        }
    }
    fn pop(&mut self) -> Option<Flight<F>> {
        match self {
            Line::Fifo(q) => q.pop_front(),
            Line::Heap(h) => h.pop(),
        }
    }
    fn push(&mut self, f: Flight<F>) {
        match self {
            Line::Fifo(q) => q.push_back(f),
            Line::Heap(h) => h.push(f),
        }
    }
    fn len(&self) -> usize {
        match self {
            Line::Fifo(q) => q.len(),
            Line::Heap(h) => h.len(),
        }
    }
}

/// xorshift64*: a small, seeded generator for loss and jitter (runs are reproducible).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction of a link.
pub struct LinkDir<F> {
    params: LinkParams,
    sched: Scheduler<Queued<F>>,
    classifier: Classifier,
    /// When the serializer is free, in picoseconds of the clock (exact at any rate).
    busy_until_ps: u64,
    /// Serialization time per byte at the rate, ps (0: unshaped).
    ps_per_byte: u64,
    line: Line<F>,
    last_release_ns: u64,
    seq: u64,
    rng: Rng,
    /// Gilbert-Elliott: in the bad state.
    bad: bool,
    pub counters: Counters,
}

fn scheduler<F>(p: &LinkParams) -> Result<(Scheduler<Queued<F>>, Classifier), String> {
    let discipline = match &p.sched {
        SchedSpec::Fcfs => Discipline::Fcfs,
        SchedSpec::Wrr(w) => Discipline::Wrr(w.clone()),
        SchedSpec::Drr(q) => Discipline::Drr(q.clone()),
        SchedSpec::Wfq(n) => Discipline::Wfq(*n),
    };
    let policy = match p.drop {
        DropSpec::TailDrop => DropPolicy::TailDrop,
        DropSpec::Red {
            min,
            max,
            max_p,
            weight,
            gentle,
        } => DropPolicy::Red(Red::new(min, max, max_p, weight, gentle, 1)?),
    };
    let limit = QueueLimit {
        packets: p.queue_packets,
        bytes: p.queue_bytes,
    };
    let rules = (p.classes.iter())
        .map(|r| r.parse::<ClassRule>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        Scheduler::new(discipline, policy, limit, None)?,
        Classifier { rules, default: 0 },
    ))
}

fn ps_per_byte(p: &LinkParams) -> u64 {
    p.rate_bps.map_or(0, |r| (8e12 / r as f64).round() as u64)
}

impl<F> LinkDir<F> {
    /// A direction with `params` (checked by the topology), its random draws from `seed`.
    pub fn new(params: LinkParams, seed: u64) -> Result<LinkDir<F>, String> {
        let (sched, classifier) = scheduler(&params)?;
        Ok(LinkDir {
            ps_per_byte: ps_per_byte(&params),
            line: if params.reorder {
                Line::Heap(BinaryHeap::new())
            } else {
                Line::Fifo(VecDeque::new())
            },
            params,
            sched,
            classifier,
            busy_until_ps: 0,
            last_release_ns: 0,
            seq: 0,
            rng: Rng::new(seed),
            bad: false,
            counters: Counters::default(),
        })
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// The traffic class of a packet (by its headers), for [`LinkDir::enqueue`]: by the
    /// class rules, or under `wfq` its flow's queue (a hash of its addresses and ports) and
    /// weight (its DSCP, 0 counting as 1).
    pub fn classify(&self, pkt: &[u8], hdr: &linerate_dataplane::wire::Headers) -> Class {
        if let SchedSpec::Wfq(n) = self.params.sched {
            let h = linerate_dataplane::shard::flow_hash(hdr, pkt);
            return Class {
                class: (h % n as u64) as usize,
                weight: linerate_dataplane::sched::dscp(pkt, hdr)
                    .map_or(1, |d| u32::from(d).max(1)),
            };
        }
        if self.classifier.rules.is_empty() {
            Class::ZERO
        } else {
            Class {
                class: self.classifier.classify(pkt, hdr),
                weight: 1,
            }
        }
    }

    /// Whether the direction needs headers to classify.
    pub fn classifies(&self) -> bool {
        !self.classifier.rules.is_empty() || matches!(self.params.sched, SchedSpec::Wfq(_))
    }

    /// A frame of `len` bytes arrives at `now`: queued, or handed back with the reason.
    pub fn enqueue(
        &mut self,
        frame: F,
        len: u32,
        class: Class,
        now_ns: u64,
    ) -> Result<(), (F, Drop)> {
        if !self.params.up {
            self.counters.drop_down += 1;
            return Err((frame, Drop::Down));
        }
        let q = Queued {
            frame,
            len,
            weight: class.weight,
            arrived_ns: now_ns,
        };
        match self.sched.enqueue(class.class, q) {
            Ok(()) => {
                self.counters.enqueued += 1;
                Ok(())
            }
            Err((q, cause)) => Err(match cause {
                DropCause::Red => {
                    self.counters.drop_red += 1;
                    (q.frame, Drop::Red)
                }
                DropCause::TailDrop | DropCause::Policed => {
                    self.counters.drop_queue += 1;
                    (q.frame, Drop::Queue)
                }
            }),
        }
    }

    /// The next packet's delay, ns: the delay, moved by up to ± jitter.
    fn delay_ns(&mut self) -> u64 {
        let p = &self.params;
        if p.jitter_ns == 0 {
            return p.delay_ns;
        }
        let j = p.jitter_ns as f64;
        let off = (self.rng.unit() * 2.0 - 1.0) * j;
        (p.delay_ns as f64 + off).max(0.0).round() as u64
    }

    fn lost(&mut self) -> bool {
        match self.params.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.unit() < p,
            Loss::GilbertElliott {
                p,
                r,
                bad_loss,
                good_loss,
            } => {
                // Transition first, then lose with the new state's probability (netem's order).
                let u = self.rng.unit();
                self.bad = if self.bad { u >= r } else { u < p };
                self.rng.unit() < if self.bad { bad_loss } else { good_loss }
            }
        }
    }

    /// Moves what is due at `now`: serializes what the rate allows into the delay line and
    /// delivers (`out`) or loses (`dropped`) what the line releases. Returns when it next has
    /// something to do (`None`: nothing queued or in flight).
    pub fn poll(
        &mut self,
        now_ns: u64,
        out: &mut impl FnMut(F, u32),
        dropped: &mut impl FnMut(F, Drop),
    ) -> Option<u64> {
        let now_ps = now_ns.saturating_mul(1000);
        // Serialize: each packet starts when the serializer is free and it has arrived.
        while self.busy_until_ps <= now_ps {
            let Some(q) = self.sched.dequeue(now_ns) else {
                break;
            };
            let start = self.busy_until_ps.max(q.arrived_ns.saturating_mul(1000));
            let end = start + q.len as u64 * self.ps_per_byte;
            self.busy_until_ps = end;
            let depart_ns = end.div_ceil(1000);
            let mut release = depart_ns + self.delay_ns();
            if !self.params.reorder {
                release = release.max(self.last_release_ns);
            }
            self.last_release_ns = release;
            self.seq += 1;
            self.line.push(Flight {
                release_ns: release,
                seq: self.seq,
                frame: q.frame,
                len: q.len,
            });
        }
        // Release what is due.
        while self.line.head_ns().is_some_and(|t| t <= now_ns) {
            let Some(f) = self.line.pop() else { break };
            let late = now_ns - f.release_ns;
            if late > LATE_NS {
                self.counters.late += 1;
            }
            self.counters.max_late_ns = self.counters.max_late_ns.max(late);
            if self.lost() {
                self.counters.drop_loss += 1;
                dropped(f.frame, Drop::Loss);
            } else {
                self.counters.delivered += 1;
                self.counters.delivered_bytes += f.len as u64;
                out(f.frame, f.len);
            }
        }
        self.next_event()
    }

    /// When [`LinkDir::poll`] next has work: the line's head, or the serializer freeing up
    /// while packets wait.
    pub fn next_event(&mut self) -> Option<u64> {
        let serializer = (self.queued() > 0).then(|| self.busy_until_ps.div_ceil(1000));
        match (self.line.head_ns(), serializer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Packets waiting in the class queues (not counting the one on the wire).
    pub fn queued(&self) -> usize {
        (0..self.sched.classes())
            .map(|c| self.sched.stats(c).queued)
            .sum()
    }

    /// Bytes waiting in the class queues.
    pub fn queued_bytes(&self) -> usize {
        (0..self.sched.classes())
            .map(|c| self.sched.stats(c).queued_bytes)
            .sum()
    }

    /// Packets serialized and not yet released.
    pub fn in_flight(&self) -> usize {
        self.line.len()
    }

    /// Takes new settings while running. Queued and in-flight packets keep their place when
    /// the queue's shape stays; a new discipline, limit or drop policy rebuilds the queues
    /// (packets past the new limit are dropped). A link going down drops everything it holds.
    pub fn set_params(
        &mut self,
        params: LinkParams,
        dropped: &mut impl FnMut(F, Drop),
    ) -> Result<(), String> {
        let shape_changed = params.sched != self.params.sched
            || params.drop != self.params.drop
            || params.queue_packets != self.params.queue_packets
            || params.queue_bytes != self.params.queue_bytes
            || params.classes != self.params.classes;
        if shape_changed {
            // Rare (a control-plane change): the waiting packets move to the new queues, in
            // order, in the first class (their old class is not kept).
            let (mut sched, classifier) = scheduler(&params)?;
            let waiting: Vec<Queued<F>> = self.sched.drain().collect();
            for q in waiting {
                if let Err((q, _)) = sched.enqueue(0, q) {
                    self.counters.drop_queue += 1;
                    dropped(q.frame, Drop::Queue);
                }
            }
            self.sched = sched;
            self.classifier = classifier;
        }
        if params.reorder != self.params.reorder {
            let mut line = if params.reorder {
                Line::Heap(BinaryHeap::new())
            } else {
                Line::Fifo(VecDeque::new())
            };
            while let Some(f) = self.line.pop() {
                line.push(f);
            }
            self.line = line;
        }
        self.ps_per_byte = ps_per_byte(&params);
        let going_down = self.params.up && !params.up;
        self.params = params;
        if going_down {
            for q in self.sched.drain() {
                self.counters.drop_down += 1;
                dropped(q.frame, Drop::Down);
            }
            while let Some(f) = self.line.pop() {
                self.counters.drop_down += 1;
                dropped(f.frame, Drop::Down);
            }
        }
        Ok(())
    }

    /// Everything it holds, for a worker that shuts down (frames go back to their pool).
    pub fn drain(&mut self, out: &mut impl FnMut(F)) {
        for q in self.sched.drain() {
            out(q.frame);
        }
        while let Some(f) = self.line.pop() {
            out(f.frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut LinkParams)) -> LinkParams {
        let mut p = LinkParams::default();
        f(&mut p);
        p
    }

    /// Frames delivered with their time, and frames dropped with the reason.
    type Outcome = (Vec<(u32, u64)>, Vec<(u32, Drop)>);

    /// Runs `l` to completion from `now`, stepping to each event.
    fn run(l: &mut LinkDir<u32>, mut now: u64) -> Outcome {
        let (mut got, mut lost) = (Vec::new(), Vec::new());
        loop {
            let next = l.poll(now, &mut |f, _| got.push((f, now)), &mut |f, d| {
                lost.push((f, d))
            });
            match next {
                Some(t) => now = t.max(now),
                None => return (got, lost),
            }
        }
    }

    #[test]
    fn the_rate_spaces_packets_and_the_delay_shifts_them() {
        // 10 Mbit/s: 1500 bytes take 1.2 ms; 5 ms of delay.
        let mut l = LinkDir::new(
            params(|p| {
                p.rate_bps = Some(10_000_000);
                p.delay_ns = 5_000_000;
            }),
            1,
        )
        .unwrap();
        for i in 0..100 {
            l.enqueue(i, 1500, Class::ZERO, 0).unwrap();
        }
        let (got, lost) = run(&mut l, 0);
        assert!(lost.is_empty());
        for (i, &(f, t)) in got.iter().enumerate() {
            assert_eq!(f, i as u32, "order kept");
            assert_eq!(t, (i as u64 + 1) * 1_200_000 + 5_000_000, "packet {i}");
        }
        assert_eq!(l.counters.delivered_bytes, 150_000);
    }

    #[test]
    fn a_late_worker_loses_no_rate() {
        // Polled only every 50 ms, a 1 Mbit/s link still delivers at its rate: start times are
        // virtual, so packets serialized late catch up.
        let mut l = LinkDir::new(params(|p| p.rate_bps = Some(1_000_000)), 1).unwrap();
        for i in 0..100 {
            l.enqueue(i, 1250, Class::ZERO, 0).unwrap(); // 10 ms each
        }
        let mut got = 0;
        let mut now = 0;
        while got < 100 {
            now += 50_000_000;
            l.poll(now, &mut |_, _| got += 1, &mut |_, _| {});
            assert!(got <= (now / 10_000_000) as usize);
        }
        assert_eq!(now, 1_000_000_000, "100 packets of 10 ms in one second");
    }

    #[test]
    fn an_idle_link_starts_a_packet_when_it_arrives() {
        let mut l = LinkDir::new(
            params(|p| {
                p.rate_bps = Some(8_000_000); // 1 byte per µs
                p.delay_ns = 1_000;
            }),
            1,
        )
        .unwrap();
        l.enqueue(1, 100, Class::ZERO, 5_000_000).unwrap();
        let (got, _) = run(&mut l, 5_000_000);
        assert_eq!(got, [(1, 5_000_000 + 100_000 + 1_000)]);
    }

    #[test]
    fn jitter_keeps_order_unless_reordering_is_asked_for() {
        let mk = |reorder| {
            LinkDir::new(
                params(|p| {
                    p.delay_ns = 10_000_000;
                    p.jitter_ns = 5_000_000;
                    p.reorder = reorder;
                }),
                7,
            )
            .unwrap()
        };
        for reorder in [false, true] {
            let mut l = mk(reorder);
            for i in 0..1000u32 {
                l.enqueue(i, 100, Class::ZERO, i as u64 * 10_000).unwrap();
                l.poll(i as u64 * 10_000, &mut |_, _| {}, &mut |_, _| {});
            }
            let (got, _) = run(&mut l, 0);
            let inversions = got.windows(2).filter(|w| w[1].0 < w[0].0).count();
            let (lo, hi) = got.iter().fold((u64::MAX, 0), |(lo, hi), &(f, t)| {
                let d = t - f as u64 * 10_000;
                (lo.min(d), hi.max(d))
            });
            if reorder {
                assert!(inversions > 100, "{inversions}");
                assert!(lo >= 5_000_000 && hi <= 15_000_000, "{lo} {hi}");
            } else {
                assert_eq!(inversions, 0);
                assert!(lo >= 5_000_000, "{lo}");
            }
        }
    }

    #[test]
    fn random_loss_falls_inside_its_binomial_interval() {
        let n = 200_000u32;
        let mut l = LinkDir::new(
            params(|p| {
                p.loss = Loss::Random(0.05);
                p.queue_packets = n as usize;
            }),
            42,
        )
        .unwrap();
        for i in 0..n {
            l.enqueue(i, 100, Class::ZERO, 0).unwrap();
        }
        let (got, lost) = run(&mut l, 0);
        assert_eq!(got.len() + lost.len(), n as usize);
        let rate = lost.len() as f64 / n as f64;
        // 99%: ± 2.576 standard deviations.
        let sd = (0.05 * 0.95 / n as f64).sqrt();
        assert!((rate - 0.05).abs() < 2.576 * sd, "{rate}");
    }

    #[test]
    fn gilbert_elliott_loses_at_its_stationary_rate_in_bursts() {
        let n = 400_000u32;
        let (p, r, bad, good) = (0.01, 0.1, 0.7, 0.001);
        let mut l = LinkDir::new(
            params(|x| {
                x.loss = Loss::GilbertElliott {
                    p,
                    r,
                    bad_loss: bad,
                    good_loss: good,
                };
                x.queue_packets = n as usize;
            }),
            3,
        )
        .unwrap();
        for i in 0..n {
            l.enqueue(i, 100, Class::ZERO, 0).unwrap();
        }
        let (_, lost) = run(&mut l, 0);
        let want = p / (p + r) * bad + r / (p + r) * good;
        let rate = lost.len() as f64 / n as f64;
        assert!((rate - want).abs() / want < 0.1, "{rate} vs {want}");
        // Bursty: consecutive losses far more often than with independent losses.
        let pairs = lost.windows(2).filter(|w| w[1].0 == w[0].0 + 1).count() as f64;
        assert!(pairs / lost.len() as f64 > 3.0 * want, "{pairs}");
    }

    #[test]
    fn a_full_queue_drops_at_the_tail_and_a_down_link_drops_everything() {
        let mut l = LinkDir::new(
            params(|p| {
                p.rate_bps = Some(1_000_000);
                p.queue_packets = 10;
            }),
            1,
        )
        .unwrap();
        let mut refused = 0;
        for i in 0..20 {
            if l.enqueue(i, 1000, Class::ZERO, 0).is_err() {
                refused += 1;
            }
        }
        assert_eq!((refused, l.counters.drop_queue), (10, 10));
        let mut dropped = Vec::new();
        let mut down = l.params().clone();
        down.up = false;
        l.set_params(down, &mut |f, d| dropped.push((f, d)))
            .unwrap();
        assert_eq!(dropped.len(), 10);
        assert!(dropped.iter().all(|&(_, d)| d == Drop::Down));
        assert!(matches!(
            l.enqueue(99, 100, Class::ZERO, 0),
            Err((99, Drop::Down))
        ));
    }

    #[test]
    fn a_live_change_of_delay_applies_to_the_next_packets() {
        let mut l = LinkDir::new(params(|p| p.delay_ns = 10_000_000), 1).unwrap();
        l.enqueue(1, 100, Class::ZERO, 0).unwrap();
        l.poll(0, &mut |_, _| {}, &mut |_, _| {});
        let mut p = l.params().clone();
        p.delay_ns = 30_000_000;
        l.set_params(p, &mut |_, _| {}).unwrap();
        l.enqueue(2, 100, Class::ZERO, 1_000_000).unwrap();
        let (got, _) = run(&mut l, 1_000_000);
        assert_eq!(got, [(1, 10_000_000), (2, 31_000_000)]);
    }

    #[test]
    fn wrr_classes_share_a_saturated_link_by_weight() {
        let mut l = LinkDir::new(
            params(|p| {
                p.rate_bps = Some(1_000_000);
                p.sched = SchedSpec::Wrr(vec![3, 1]);
                p.queue_packets = 10_000;
            }),
            1,
        )
        .unwrap();
        for i in 0..4000u32 {
            l.enqueue(
                i,
                100,
                Class {
                    class: (i % 2) as usize,
                    weight: 1,
                },
                0,
            )
            .unwrap();
        }
        // Half a second: 625 packets of 800 µs.
        let mut got = Vec::new();
        l.poll(500_000_000, &mut |f, _| got.push(f), &mut |_, _| {});
        let class1 = got.iter().filter(|&&f| f % 2 == 1).count() as f64;
        let share = class1 / got.len() as f64;
        assert!((share - 0.25).abs() < 0.01, "{share}");
    }
}
