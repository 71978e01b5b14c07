//! Output-port traffic management as pure data structures: no I/O, no clock of its own (every
//! call takes `now` in nanoseconds), so tests drive it with a simulated clock and get exact
//! answers.
//!
//! An output port's [`Scheduler`] holds one bounded queue per traffic class (bounded in
//! packets and in bytes, however many flows feed it), admits packets through a
//! [`DropPolicy`] (tail drop or RED, gentle or not), picks the next class by FCFS, WRR (packet
//! weights) or DRR (byte quanta, fair with mixed sizes), and releases packets through an
//! optional token-bucket [`Shaper`] that delays rather than drops: when the head packet has to
//! wait, `dequeue` returns nothing and [`Scheduler::next_ready`] says when to come back, so a
//! worker never blocks or spins on it. A [`Policer`] drops above its rate instead.
//!
//! Rates are bits per second everywhere (config: `100M`, `10G`); buckets are bytes.
//! A dropped packet is always handed back to the caller (`Err((packet, reason))`) so that
//! frames go back to their pool: nothing is lost.

use crate::wire::{Headers, L3};
use std::collections::VecDeque;

/// Anything with a length on the wire.
pub trait Packet {
    fn wire_len(&self) -> u32;
    /// Its flow's weight under [`Discipline::Wfq`] (at least 1).
    fn weight(&self) -> u32 {
        1
    }
}

impl Packet for crate::frame::Frame {
    fn wire_len(&self) -> u32 {
        self.len() as u32
    }
}

/// Why the scheduler refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The class queue is full (packets or bytes).
    TailDrop,
    /// RED decided to drop early (or forced: average above its maximum).
    Red,
    /// The policer's bucket was empty.
    Policed,
}

/// How a class queue admits packets.
#[derive(Debug, Clone)]
pub enum DropPolicy {
    TailDrop,
    Red(Red),
}

/// Random Early Detection (Floyd & Jacobson 1993), on the EWMA of the queue length in
/// packets, with the count-since-last-drop correction that spreads drops evenly, and the
/// gentle variant (probability rising from `max_p` to 1 between `max_th` and `2 * max_th`
/// instead of jumping to 1).
#[derive(Debug, Clone)]
pub struct Red {
    pub min_th: f64,
    pub max_th: f64,
    pub max_p: f64,
    /// EWMA weight `w_q`, a real fraction (e.g. 0.002).
    pub weight: f64,
    pub gentle: bool,
    avg: f64,
    count: u64,
    rng: u64,
}

impl Red {
    /// Checks the parameters: 0 < min_th < max_th, 0 < max_p <= 1, 0 < weight <= 1.
    pub fn new(
        min_th: f64,
        max_th: f64,
        max_p: f64,
        weight: f64,
        gentle: bool,
        seed: u64,
    ) -> Result<Red, String> {
        if !(min_th > 0.0 && min_th < max_th) {
            return Err(format!(
                "RED thresholds: need 0 < min ({min_th}) < max ({max_th})"
            ));
        }
        if !(max_p > 0.0 && max_p <= 1.0) {
            return Err(format!("RED max_p {max_p}: must be in (0, 1]"));
        }
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(format!("RED weight {weight}: must be in (0, 1]"));
        }
        Ok(Red {
            min_th,
            max_th,
            max_p,
            weight,
            gentle,
            avg: 0.0,
            count: 0,
            rng: seed | 1,
        })
    }

    /// The drop probability `p_b` for an average queue of `avg` packets (before the count
    /// correction).
    pub fn probability(&self, avg: f64) -> f64 {
        if avg < self.min_th {
            0.0
        } else if avg < self.max_th {
            self.max_p * (avg - self.min_th) / (self.max_th - self.min_th)
        } else if self.gentle && avg < 2.0 * self.max_th {
            self.max_p + (1.0 - self.max_p) * (avg - self.max_th) / self.max_th
        } else {
            1.0
        }
    }

    pub fn average(&self) -> f64 {
        self.avg
    }

    fn uniform(&mut self) -> f64 {
        // xorshift64*: deterministic per seed, good enough for drop decisions.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Updates the average with the current queue length and decides for one arrival.
    fn drop_arrival(&mut self, queue_len: usize) -> bool {
        self.avg += self.weight * (queue_len as f64 - self.avg);
        let pb = self.probability(self.avg);
        if pb <= 0.0 {
            self.count = 0;
            return false;
        }
        if pb >= 1.0 {
            self.count = 0;
            return true;
        }
        self.count += 1;
        let denom = 1.0 - self.count as f64 * pb;
        let pa = if denom <= 0.0 { 1.0 } else { pb / denom };
        if self.uniform() < pa {
            self.count = 0;
            true
        } else {
            false
        }
    }
}

/// A token bucket: `rate` bits per second, at most `burst` bytes of tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bps: f64,
    burst: f64,
    tokens: f64,
    last_ns: u64,
}

impl TokenBucket {
    /// Rates a bucket takes, in bit/s: from 1 bit/s to 10 Tbit/s. Outside it the waits it
    /// computes stop meaning anything (a day per byte, or less than a nanosecond per frame)
    /// and, at the extremes, overflow a `Duration`.
    pub const RATE_RANGE: (f64, f64) = linerate_proto::units::RATE_RANGE;

    /// Starts full. `burst` must hold at least one packet of the largest size sent through it.
    pub fn new(rate_bps: f64, burst_bytes: u32) -> Result<TokenBucket, String> {
        let (lo, hi) = Self::RATE_RANGE;
        if !(rate_bps.is_finite() && (lo..=hi).contains(&rate_bps)) {
            return Err(format!(
                "rate {rate_bps} bit/s: must be between {lo} and {hi} (1 bit/s to 10 Tbit/s)"
            ));
        }
        if burst_bytes == 0 {
            return Err("burst: must be at least one packet's bytes".into());
        }
        Ok(TokenBucket {
            rate_bps,
            burst: burst_bytes as f64,
            tokens: burst_bytes as f64,
            last_ns: 0,
        })
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            let dt = (now_ns - self.last_ns) as f64 / 1e9;
            self.tokens = (self.tokens + dt * self.rate_bps / 8.0).min(self.burst);
            self.last_ns = now_ns;
        }
    }

    /// Takes `bytes` if the bucket holds them.
    pub fn take(&mut self, bytes: u32, now_ns: u64) -> bool {
        self.refill(now_ns);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Takes `bytes` whether or not the bucket holds them, going into debt: for readers that
    /// learn a size only after moving the bytes (a socket read). See [`TokenBucket::debt_wait`].
    pub fn spend(&mut self, bytes: u64, now_ns: u64) {
        self.refill(now_ns);
        self.tokens -= bytes as f64;
    }

    /// How long until the bucket is out of debt (zero when it is not in debt).
    pub fn debt_wait(&mut self, now_ns: u64) -> std::time::Duration {
        self.refill(now_ns);
        if self.tokens >= 0.0 {
            std::time::Duration::ZERO
        } else {
            // Bounded by the rate's range and the debt a u64 of bytes can make, but saturating
            // all the same: a wait is never worth a panic.
            std::time::Duration::try_from_secs_f64(-self.tokens * 8.0 / self.rate_bps)
                .unwrap_or(std::time::Duration::MAX)
        }
    }

    /// When `bytes` will be available (now, if they are).
    pub fn ready_at(&mut self, bytes: u32, now_ns: u64) -> u64 {
        self.refill(now_ns);
        let missing = bytes as f64 - self.tokens;
        if missing <= 0.0 {
            now_ns
        } else {
            // A float-to-integer cast saturates; the sum must too.
            now_ns.saturating_add((missing * 8.0 / self.rate_bps * 1e9).ceil() as u64)
        }
    }
}

/// Delays packets to a rate: the scheduler's output stage.
pub type Shaper = TokenBucket;

/// Drops packets above a rate (input stage).
#[derive(Debug, Clone)]
pub struct Policer(TokenBucket);

impl Policer {
    pub fn new(rate_bps: f64, burst_bytes: u32) -> Result<Policer, String> {
        TokenBucket::new(rate_bps, burst_bytes).map(Policer)
    }

    /// Whether a packet of `bytes` conforms (and is let through) now.
    pub fn admit(&mut self, bytes: u32, now_ns: u64) -> bool {
        self.0.take(bytes, now_ns)
    }
}

/// How the next class is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Discipline {
    /// One queue, first come first served (class numbers are ignored).
    Fcfs,
    /// Weighted round robin: class `i` sends up to `weights[i]` packets per round.
    Wrr(Vec<u32>),
    /// Deficit round robin: class `i` earns `quanta[i]` bytes of credit per round.
    Drr(Vec<u32>),
    /// Weighted fair queueing by flow: this many queues (flows hashed onto them), served by
    /// deficit round robin; a queue earns its head packet's weight × [`WFQ_QUANTUM`] bytes
    /// per round.
    Wfq(usize),
}

/// Bytes a weight-1 flow earns per round under [`Discipline::Wfq`].
pub const WFQ_QUANTUM: u32 = 1514;

impl Discipline {
    /// How many classes it serves, or why its weights/quanta are unusable.
    pub fn classes(&self) -> Result<usize, String> {
        match self {
            Discipline::Fcfs => Ok(1),
            Discipline::Wrr(w) | Discipline::Drr(w) => {
                if w.is_empty() || w.contains(&0) {
                    return Err("weights/quanta: give one positive value per class".into());
                }
                Ok(w.len())
            }
            Discipline::Wfq(n) if (1..=4096).contains(n) => Ok(*n),
            Discipline::Wfq(n) => Err(format!("wfq: {n} queues, give 1 to 4096")),
        }
    }
}

/// Bounds of one class queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    pub packets: usize,
    pub bytes: usize,
}

struct Class<T> {
    queue: VecDeque<T>,
    bytes: usize,
    policy: DropPolicy,
    /// WRR: packets left this round; DRR: byte deficit.
    credit: i64,
    sent: u64,
    dropped: u64,
}

/// Counters of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    pub queued: usize,
    pub queued_bytes: usize,
    pub sent: u64,
    pub dropped: u64,
}

/// One output port's queues, discipline, drop policy and shaper.
pub struct Scheduler<T> {
    classes: Vec<Class<T>>,
    discipline: Discipline,
    limit: QueueLimit,
    shaper: Option<Shaper>,
    /// WRR/DRR: the class whose turn it is.
    turn: usize,
    /// DRR: whether `turn` already got its quantum this visit.
    granted: bool,
}

impl<T: Packet> Scheduler<T> {
    /// `policy` applies to every class queue; each is bounded by `limit`.
    pub fn new(
        discipline: Discipline,
        policy: DropPolicy,
        limit: QueueLimit,
        shaper: Option<Shaper>,
    ) -> Result<Scheduler<T>, String> {
        let n = discipline.classes()?;
        if limit.packets == 0 || limit.bytes == 0 {
            return Err("queue limit: at least one packet and one byte".into());
        }
        let classes = (0..n)
            .map(|_| Class {
                queue: VecDeque::new(),
                bytes: 0,
                policy: policy.clone(),
                credit: 0,
                sent: 0,
                dropped: 0,
            })
            .collect();
        Ok(Scheduler {
            classes,
            discipline,
            limit,
            shaper,
            turn: 0,
            granted: false,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes.len()
    }

    /// Replaces the discipline's weights (or quanta) and the shaper while the queues keep
    /// their packets; the round starts over. The number of classes is fixed at creation (the
    /// classifier's), so the new discipline must have as many.
    pub fn reconfigure(
        &mut self,
        discipline: Discipline,
        shaper: Option<Shaper>,
    ) -> Result<(), String> {
        let n = discipline.classes()?;
        if n != self.classes.len() {
            return Err(format!(
                "{n} class(es) given, the port has {}",
                self.classes.len()
            ));
        }
        for c in &mut self.classes {
            c.credit = 0;
        }
        self.discipline = discipline;
        self.shaper = shaper;
        self.turn = 0;
        self.granted = false;
        Ok(())
    }

    /// Queues `pkt` in `class` (clamped to the last class), or hands it back with the reason.
    pub fn enqueue(&mut self, class: usize, pkt: T) -> Result<(), (T, DropCause)> {
        let c = class.min(self.classes.len() - 1);
        let limit = self.limit;
        let cl = &mut self.classes[c];
        let len = pkt.wire_len() as usize;
        if let DropPolicy::Red(red) = &mut cl.policy
            && red.drop_arrival(cl.queue.len())
        {
            cl.dropped += 1;
            return Err((pkt, DropCause::Red));
        }
        if cl.queue.len() >= limit.packets || cl.bytes + len > limit.bytes {
            cl.dropped += 1;
            return Err((pkt, DropCause::TailDrop));
        }
        cl.bytes += len;
        cl.queue.push_back(pkt);
        Ok(())
    }

    /// The next packet to send now, if the discipline has one and the shaper allows it.
    pub fn dequeue(&mut self, now_ns: u64) -> Option<T> {
        let c = self.pick()?;
        let len = self.classes[c].queue.front()?.wire_len();
        if let Some(s) = &mut self.shaper
            && !s.take(len, now_ns)
        {
            return None;
        }
        self.commit(c, len);
        let cl = &mut self.classes[c];
        let pkt = cl.queue.pop_front()?;
        cl.bytes -= len as usize;
        cl.sent += 1;
        Some(pkt)
    }

    /// When `dequeue` will have something: `None` when every queue is empty.
    pub fn next_ready(&mut self, now_ns: u64) -> Option<u64> {
        let c = self.pick()?;
        let len = self.classes[c].queue.front()?.wire_len();
        Some(match &mut self.shaper {
            Some(s) => s.ready_at(len, now_ns),
            None => now_ns,
        })
    }

    /// The class the discipline serves next (without consuming its turn).
    fn pick(&mut self) -> Option<usize> {
        let n = self.classes.len();
        if self.classes.iter().all(|c| c.queue.is_empty()) {
            return None;
        }
        match &self.discipline {
            Discipline::Fcfs => Some(0),
            Discipline::Wrr(w) => {
                for _ in 0..=n {
                    let cl = &mut self.classes[self.turn];
                    if !cl.queue.is_empty() {
                        if !self.granted {
                            cl.credit = w[self.turn] as i64;
                            self.granted = true;
                        }
                        if cl.credit > 0 {
                            return Some(self.turn);
                        }
                    }
                    self.turn = (self.turn + 1) % n;
                    self.granted = false;
                }
                None
            }
            Discipline::Drr(_) | Discipline::Wfq(_) => {
                // Bounded: each full cycle adds a quantum to every backlogged class, so a head
                // packet of at most `max_len` bytes is reached within max_len / min_quantum
                // cycles.
                for _ in 0..(n * 64 * 1024) {
                    let quantum = match &self.discipline {
                        Discipline::Drr(q) => Some(q[self.turn] as i64),
                        _ => None,
                    };
                    let cl = &mut self.classes[self.turn];
                    match cl.queue.front() {
                        None => {
                            cl.credit = 0;
                        }
                        Some(head) => {
                            if !self.granted {
                                cl.credit += quantum
                                    .unwrap_or(head.weight().max(1) as i64 * WFQ_QUANTUM as i64);
                                self.granted = true;
                            }
                            if cl.credit >= head.wire_len() as i64 {
                                return Some(self.turn);
                            }
                        }
                    }
                    self.turn = (self.turn + 1) % n;
                    self.granted = false;
                }
                None
            }
        }
    }

    /// Charges class `c` for a packet of `len` bytes it sends.
    fn commit(&mut self, c: usize, len: u32) {
        match &self.discipline {
            Discipline::Fcfs => {}
            Discipline::Wrr(_) => self.classes[c].credit -= 1,
            Discipline::Drr(_) | Discipline::Wfq(_) => {
                self.classes[c].credit -= len as i64;
                if self.classes[c].queue.len() == 1 {
                    // Emptied: an idle class keeps no credit (DRR).
                    self.classes[c].credit = 0;
                }
            }
        }
    }

    pub fn stats(&self, class: usize) -> ClassStats {
        let c = &self.classes[class];
        ClassStats {
            queued: c.queue.len(),
            queued_bytes: c.bytes,
            sent: c.sent,
            dropped: c.dropped,
        }
    }

    /// Takes every queued packet out (at shutdown, to give frames back to their pool).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.classes.iter_mut().flat_map(|c| {
            c.bytes = 0;
            c.queue.drain(..)
        })
    }
}

/// The DSCP of an IP packet (`None` for anything else).
pub fn dscp(pkt: &[u8], hdr: &Headers) -> Option<u8> {
    let l3 = hdr.l3_offset as usize;
    match hdr.l3 {
        L3::Ipv4 { .. } => pkt.get(l3 + 1).map(|tos| tos >> 2),
        L3::Ipv6 { .. } => {
            let (a, b) = (*pkt.get(l3)?, *pkt.get(l3 + 1)?);
            Some((((a & 0x0f) << 4) | (b >> 4)) >> 2)
        }
        _ => None,
    }
}

/// One classification rule: `class N [dscp D] [<proto> <src> <dst> [sport P] [dport P]]`,
/// the 5-tuple part in the filter's syntax (`udp 10.0.0.0/8 any dport 5000-5999`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    pub class: usize,
    pub dscp: Option<u8>,
    pub tuple: Option<crate::logic::Rule>,
}

impl std::str::FromStr for ClassRule {
    type Err = String;

    fn from_str(s: &str) -> Result<ClassRule, String> {
        let mut toks = s.split_whitespace().peekable();
        if !toks.next().is_some_and(|t| t.eq_ignore_ascii_case("class")) {
            return Err(format!("'{s}': a class rule starts with `class N`"));
        }
        let class = toks
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("'{s}': `class` needs a class number"))?;
        let mut dscp = None;
        if toks.peek().is_some_and(|t| t.eq_ignore_ascii_case("dscp")) {
            toks.next();
            let d: u8 = toks
                .next()
                .and_then(|t| t.parse().ok())
                .filter(|d| *d < 64)
                .ok_or_else(|| format!("'{s}': dscp needs a value 0 to 63"))?;
            dscp = Some(d);
        }
        let rest: Vec<&str> = toks.collect();
        let tuple = if rest.is_empty() {
            None
        } else {
            Some(
                format!("permit {}", rest.join(" "))
                    .parse::<crate::logic::Rule>()
                    .map_err(|e| format!("'{s}': {e}"))?,
            )
        };
        Ok(ClassRule { class, dscp, tuple })
    }
}

/// First-match classification into traffic classes; unmatched packets get `default`.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    pub rules: Vec<ClassRule>,
    pub default: usize,
}

impl Classifier {
    pub fn classify(&self, pkt: &[u8], hdr: &Headers) -> usize {
        let d = dscp(pkt, hdr);
        self.rules
            .iter()
            .find(|r| {
                r.dscp.is_none_or(|want| d == Some(want))
                    && r.tuple.as_ref().is_none_or(|t| t.matches(hdr))
            })
            .map_or(self.default, |r| r.class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct P(u32, usize);
    impl Packet for P {
        fn wire_len(&self) -> u32 {
            self.0
        }
    }

    const BIG: QueueLimit = QueueLimit {
        packets: 100_000,
        bytes: 1 << 30,
    };

    /// Keeps every class backlogged and dequeues `n` packets: packets and bytes per class.
    fn shares(d: Discipline, sizes: &[u32], n: usize) -> (Vec<u64>, Vec<u64>) {
        let k = sizes.len();
        let mut s: Scheduler<P> = Scheduler::new(d, DropPolicy::TailDrop, BIG, None).unwrap();
        for (c, &len) in sizes.iter().enumerate() {
            for _ in 0..n {
                s.enqueue(c, P(len, c)).unwrap();
            }
        }
        let (mut pk, mut by) = (vec![0; k], vec![0; k]);
        for _ in 0..n {
            let p = s.dequeue(0).unwrap();
            pk[p.1] += 1;
            by[p.1] += p.0 as u64;
        }
        (pk, by)
    }

    fn within(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * want
    }

    #[test]
    fn wrr_shares_follow_packet_weights_within_2_percent() {
        let (pk, _) = shares(Discipline::Wrr(vec![1, 2, 5]), &[100, 100, 100], 10_000);
        let total: u64 = pk.iter().sum();
        for (i, w) in [1.0, 2.0, 5.0].iter().enumerate() {
            let share = pk[i] as f64 / total as f64;
            assert!(within(share, w / 8.0, 0.02), "class {i}: {pk:?}");
        }
    }

    #[test]
    fn drr_shares_follow_byte_quanta_with_mixed_sizes() {
        // 64-byte packets against 1500-byte packets, quanta 1:2: bytes split 1:2.
        let (_, by) = shares(Discipline::Drr(vec![1500, 3000]), &[64, 1500], 10_000);
        let total = (by[0] + by[1]) as f64;
        assert!(within(by[0] as f64 / total, 1.0 / 3.0, 0.02), "{by:?}");
        assert!(within(by[1] as f64 / total, 2.0 / 3.0, 0.02), "{by:?}");
        // Equal quanta are byte-fair however different the sizes.
        let (_, by) = shares(Discipline::Drr(vec![1500, 1500]), &[64, 1500], 10_000);
        assert!(within(by[0] as f64, by[1] as f64, 0.02), "{by:?}");
    }

    #[test]
    fn fcfs_keeps_arrival_order_and_idle_classes_lose_their_turn() {
        let mut s: Scheduler<P> =
            Scheduler::new(Discipline::Fcfs, DropPolicy::TailDrop, BIG, None).unwrap();
        for i in 0..5 {
            s.enqueue(i % 3, P(60, i)).unwrap();
        }
        let order: Vec<usize> = std::iter::from_fn(|| s.dequeue(0)).map(|p| p.1).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        // WRR with one class idle: the other gets everything.
        let mut s: Scheduler<P> =
            Scheduler::new(Discipline::Wrr(vec![1, 3]), DropPolicy::TailDrop, BIG, None).unwrap();
        for i in 0..10 {
            s.enqueue(1, P(60, i)).unwrap();
        }
        assert_eq!(std::iter::from_fn(|| s.dequeue(0)).count(), 10);
        assert_eq!(s.next_ready(0), None);
    }

    #[test]
    fn tail_drop_drops_exactly_what_exceeds_capacity() {
        let limit = QueueLimit {
            packets: 100,
            bytes: 1 << 20,
        };
        let mut s: Scheduler<P> =
            Scheduler::new(Discipline::Fcfs, DropPolicy::TailDrop, limit, None).unwrap();
        let dropped = (0..150)
            .filter(|&i| s.enqueue(0, P(60, i)).is_err())
            .count();
        assert_eq!(dropped, 50);
        assert_eq!(s.stats(0).queued, 100);
        // Bytes bound too: 10,000 bytes hold six 1500-byte packets.
        let limit = QueueLimit {
            packets: 1000,
            bytes: 10_000,
        };
        let mut s: Scheduler<P> =
            Scheduler::new(Discipline::Fcfs, DropPolicy::TailDrop, limit, None).unwrap();
        let results: Vec<bool> = (0..10).map(|i| s.enqueue(0, P(1500, i)).is_ok()).collect();
        assert_eq!(results.iter().filter(|&&ok| ok).count(), 6);
        match s.enqueue(0, P(1500, 99)) {
            Err((p, DropCause::TailDrop)) => assert_eq!(p.1, 99, "the packet comes back"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.drain().count(), 6);
        assert_eq!(s.stats(0).queued_bytes, 0);
    }

    #[test]
    fn red_probability_is_the_formula_and_drops_follow_it() {
        let red = Red::new(5.0, 15.0, 0.1, 0.002, false, 1).unwrap();
        assert_eq!(red.probability(4.9), 0.0);
        assert!((red.probability(10.0) - 0.05).abs() < 1e-12);
        assert_eq!(red.probability(15.0), 1.0);
        let gentle = Red::new(5.0, 15.0, 0.1, 0.002, true, 1).unwrap();
        assert!((gentle.probability(22.5) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert_eq!(gentle.probability(30.0), 1.0);
        // Hold the queue at 10 packets until the average settles there, then count drops.
        // With the count correction (count = arrivals since the last drop, this one included),
        // the gap between drops is uniform over 1..1/p_b - 1 arrivals: mean 1/(2 p_b), so the
        // drop rate is 2 p_b.
        let mut red = Red::new(5.0, 15.0, 0.1, 0.002, false, 7).unwrap();
        for _ in 0..20_000 {
            red.drop_arrival(10);
        }
        assert!((red.average() - 10.0).abs() < 0.01);
        let n = 200_000;
        let drops = (0..n).filter(|_| red.drop_arrival(10)).count() as f64;
        let pb = red.probability(10.0);
        let want = 2.0 * pb;
        let sigma = (want * (1.0 - want) / n as f64).sqrt();
        assert!(
            (drops / n as f64 - want).abs() < 4.0 * sigma,
            "rate {} against {want}",
            drops / n as f64
        );
        assert!(Red::new(15.0, 5.0, 0.1, 0.002, false, 1).is_err());
        assert!(Red::new(5.0, 15.0, 0.0, 0.002, false, 1).is_err());
        assert!(Red::new(5.0, 15.0, 0.1, 1.5, false, 1).is_err());
    }

    #[test]
    fn red_in_the_scheduler_drops_early_and_hands_packets_back() {
        let red = Red::new(2.0, 6.0, 0.5, 1.0, false, 3).unwrap();
        let mut s: Scheduler<P> =
            Scheduler::new(Discipline::Fcfs, DropPolicy::Red(red), BIG, None).unwrap();
        let mut early = 0;
        for i in 0..100 {
            if let Err((p, why)) = s.enqueue(0, P(60, i)) {
                assert_eq!((why, p.1), (DropCause::Red, i));
                early += 1;
            }
        }
        // With w = 1 the average is the queue itself: it never passes max_th = 6.
        assert!(early > 0 && s.stats(0).queued <= 7, "{:?}", s.stats(0));
    }

    #[test]
    fn shaper_delivers_its_rate_over_a_second_and_never_bursts_past_the_bucket() {
        let rate = 100e6;
        let burst = 15_000;
        let shaper = TokenBucket::new(rate, burst).unwrap();
        let mut s: Scheduler<P> =
            Scheduler::new(Discipline::Fcfs, DropPolicy::TailDrop, BIG, Some(shaper)).unwrap();
        let mut now = 0u64;
        let mut sent = 0u64;
        let mut next_id = 0;
        // Offered load is twice the rate, so the queue never runs dry.
        while now <= 1_000_000_000 {
            while s.stats(0).queued < 1000 {
                s.enqueue(0, P(1500, next_id)).unwrap();
                next_id += 1;
            }
            while let Some(p) = s.dequeue(now) {
                sent += p.0 as u64;
                let allowed = burst as f64 + rate / 8.0 * now as f64 / 1e9;
                assert!(
                    sent as f64 <= allowed + 1e-6,
                    "burst at {now} ns: {sent} > {allowed}"
                );
            }
            // The worker sleeps until the shaper says: it never spins.
            let next = s.next_ready(now).unwrap();
            assert!(next > now);
            now = next;
        }
        let want = rate / 8.0;
        assert!(within(sent as f64, want, 0.01), "{sent} bytes in 1 s");
    }

    #[test]
    fn policer_drops_above_rate() {
        let mut p = Policer::new(8e6, 3000).unwrap(); // 1 MB/s
        let mut passed = 0u64;
        // 2 MB/s offered for one second, 1000-byte packets every 0.5 ms.
        for i in 0..2000u64 {
            if p.admit(1000, i * 500_000) {
                passed += 1000;
            }
        }
        assert!(within(passed as f64, 1e6, 0.01), "{passed}");
        assert!(TokenBucket::new(0.0, 1).is_err());
        for bad in [1e-300, 0.5, 1e300, f64::INFINITY, f64::NAN, -1.0] {
            assert!(TokenBucket::new(bad, 1500).is_err(), "{bad}");
        }
        // The extremes of the range compute waits without overflow.
        let mut slow = TokenBucket::new(1.0, u32::MAX).unwrap();
        slow.spend(u64::MAX / 2, 0);
        assert!(slow.debt_wait(0) > std::time::Duration::from_secs(1 << 40));
        assert_eq!(slow.ready_at(u32::MAX, u64::MAX - 1), u64::MAX);
        let mut fast = TokenBucket::new(1e13, 1500).unwrap();
        fast.spend(3000, 0);
        assert!(fast.debt_wait(0) < std::time::Duration::from_micros(1));
    }

    #[test]
    fn classes_by_dscp_protocol_ports_and_prefixes() {
        use crate::wire::parse_headers;
        let mut f = crate::synthetic::udp4_frame(
            "10.1.0.1".parse().unwrap(),
            "10.2.0.1".parse().unwrap(),
            4000,
            5001,
            64,
            0,
        );
        let c = Classifier {
            rules: [
                "class 1 dscp 46",
                "class 2 udp any 10.2.0.0/16 dport 5000-5999",
                "class 3 tcp any any",
            ]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect(),
            default: 0,
        };
        let h = parse_headers(&f).unwrap();
        assert_eq!(dscp(&f, &h), Some(0));
        assert_eq!(c.classify(&f, &h), 2);
        // EF (46): TOS 0xb8; the rules are first-match. (The header checksum is not redone:
        // classification does not check it.)
        f[15] = 0xb8;
        assert_eq!(dscp(&f, &h), Some(46));
        assert_eq!(c.classify(&f, &h), 1);
        f[15] = 0;
        f[36] = 0x27; // destination port 10001: outside 5000-5999
        f[37] = 0x11;
        let h = parse_headers(&f).unwrap();
        assert_eq!(c.classify(&f, &h), 0, "{h:?}");
        assert!("class x".parse::<ClassRule>().is_err());
        assert!("class 1 dscp 64".parse::<ClassRule>().is_err());
        assert!("class 1 udpp any any".parse::<ClassRule>().is_err());
        assert!("klass 1".parse::<ClassRule>().is_err());
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(
            Scheduler::<P>::new(Discipline::Wrr(vec![]), DropPolicy::TailDrop, BIG, None).is_err()
        );
        assert!(
            Scheduler::<P>::new(Discipline::Drr(vec![1, 0]), DropPolicy::TailDrop, BIG, None)
                .is_err()
        );
        let none = QueueLimit {
            packets: 0,
            bytes: 10,
        };
        assert!(Scheduler::<P>::new(Discipline::Fcfs, DropPolicy::TailDrop, none, None).is_err());
    }
}
