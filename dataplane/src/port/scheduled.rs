//! [`ScheduledPort`]: an output port with traffic management in front of it. Frames the
//! worker sends are classified, admitted (tail drop or RED) into per-class queues and leave in
//! the order and at the pace the [`Scheduler`] decides (WRR/DRR, shaper); the worker's
//! `reclaim` call every round moves whatever is due to the inner port, so a shaped port never
//! blocks or spins the worker. Receiving passes straight through.

use super::{Port, PortError};
use crate::batch::Batch;
use crate::frame::{BufferPool, Frame};
use crate::sched::{Classifier, Discipline, DropCause, Scheduler, TokenBucket};
use crate::wire::parse_headers;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters a scheduled port publishes (read by the control thread).
#[derive(Debug, Default)]
pub struct SchedCounters {
    /// Per class: frames sent, bytes sent.
    pub sent: Vec<AtomicU64>,
    pub sent_bytes: Vec<AtomicU64>,
    /// Per class: frames dropped by tail drop, by RED.
    pub tail_drops: Vec<AtomicU64>,
    pub red_drops: Vec<AtomicU64>,
}

impl SchedCounters {
    pub fn new(classes: usize) -> Arc<SchedCounters> {
        let v = || (0..classes).map(|_| AtomicU64::new(0)).collect();
        Arc::new(SchedCounters {
            sent: v(),
            sent_bytes: v(),
            tail_drops: v(),
            red_drops: v(),
        })
    }
}

pub struct ScheduledPort<P> {
    inner: P,
    sched: Scheduler<(Frame, usize)>,
    classifier: Classifier,
    /// Dequeued frames the inner port has not taken yet (its TX ring was full), and their
    /// classes and lengths, in the same order.
    pending: Batch,
    pending_meta: std::collections::VecDeque<(usize, u64)>,
    queued: usize,
    start: Instant,
    counters: Arc<SchedCounters>,
    /// Settings the control plane may change, and the version this port applied.
    live: Option<(Arc<LiveSettings>, u64)>,
}

/// The smallest shaper burst a port takes from the control plane: one full Ethernet frame,
/// as `--shape` requires.
pub const MIN_BURST: u32 = 1514;

/// One publication of [`LiveSettings`]: its version, the discipline, the shaper (total bit/s
/// over every worker, burst bytes).
type Published = (u64, Discipline, Option<(f64, u32)>);

/// Scheduler settings the control plane changes while the port runs (the controller's port
/// settings): shared by the scheduled ports of every worker on one interface, read by each at
/// every flush with one atomic load, taken from an `ArcSwap` (lock-free) when it changed.
pub struct LiveSettings {
    version: AtomicU64,
    next: ArcSwap<Published>,
    classes: usize,
    workers: usize,
    publish: std::sync::Mutex<()>,
}

impl LiveSettings {
    /// For a port with `classes` classes served by `workers` workers, which share the
    /// shaper's rate equally (as `--shape` does).
    pub fn new(classes: usize, workers: usize) -> Arc<LiveSettings> {
        Arc::new(LiveSettings {
            version: AtomicU64::new(0),
            next: ArcSwap::from_pointee((0, Discipline::Fcfs, None)),
            classes,
            workers: workers.max(1),
            publish: std::sync::Mutex::new(()),
        })
    }

    /// Classes of the port (fixed when it was built).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The version published last (0: none yet) and what it set.
    pub fn current(&self) -> (u64, Discipline, Option<(f64, u32)>) {
        let p = self.next.load();
        (p.0, p.1.clone(), p.2)
    }

    /// Checks and publishes new settings; every worker's port takes them at its next flush.
    pub fn publish(
        &self,
        discipline: Discipline,
        shaper: Option<(f64, u32)>,
    ) -> Result<u64, String> {
        let n = discipline.classes()?;
        if n != self.classes {
            return Err(format!(
                "{n} class(es) given; the port was started with {}",
                self.classes
            ));
        }
        if let Some((rate, burst)) = shaper {
            // A bucket smaller than a frame would never let a full-size frame through.
            if burst < MIN_BURST {
                return Err(format!(
                    "shaper burst {burst} bytes: at least {MIN_BURST} (one full frame)"
                ));
            }
            TokenBucket::new(rate / self.workers as f64, burst)?;
        }
        let _one = self
            .publish
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let version = self.version.load(Ordering::Acquire) + 1;
        self.next.store(Arc::new((version, discipline, shaper)));
        self.version.store(version, Ordering::Release);
        Ok(version)
    }
}

impl crate::sched::Packet for (Frame, usize) {
    fn wire_len(&self) -> u32 {
        self.0.len() as u32
    }
}

impl<P: Port> ScheduledPort<P> {
    pub fn new(
        inner: P,
        sched: Scheduler<(Frame, usize)>,
        classifier: Classifier,
        counters: Arc<SchedCounters>,
    ) -> ScheduledPort<P> {
        ScheduledPort {
            inner,
            sched,
            classifier,
            pending: Batch::new(64),
            pending_meta: std::collections::VecDeque::with_capacity(64),
            queued: 0,
            start: Instant::now(),
            counters,
            live: None,
        }
    }

    /// Lets the control plane change this port's discipline and shaper through `live`.
    pub fn with_live(mut self, live: Arc<LiveSettings>) -> ScheduledPort<P> {
        let seen = live.version.load(Ordering::Acquire);
        self.live = Some((live, seen));
        self
    }

    /// Takes settings published since the last look (one atomic load when there are none).
    fn follow_live(&mut self) {
        let Some((live, seen)) = &mut self.live else {
            return;
        };
        if live.version.load(Ordering::Acquire) == *seen {
            return;
        }
        let next = live.next.load();
        *seen = next.0;
        let workers = live.workers as f64;
        // Checked by `publish`: these cannot fail, and if they did the port would keep its
        // settings rather than stop.
        let shaper = next
            .2
            .and_then(|(rate, burst)| TokenBucket::new(rate / workers, burst).ok());
        let _ = self.sched.reconfigure(next.1.clone(), shaper);
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Moves what the scheduler releases now to the inner port.
    fn flush(&mut self, pool: &mut BufferPool) -> Result<(), PortError> {
        self.follow_live();
        let now = self.now();
        loop {
            while !self.pending.is_full() {
                let Some((f, class)) = self.sched.dequeue(now) else {
                    break;
                };
                self.queued -= 1;
                self.pending_meta.push_back((class, f.len() as u64));
                // Cannot fail: the batch has room (checked above).
                if let Err(f) = self.pending.push(f) {
                    pool.free(f);
                }
            }
            if self.pending.is_empty() {
                return Ok(());
            }
            let taken = self.inner.send(pool, &mut self.pending)?;
            for (class, len) in self.pending_meta.drain(..taken) {
                self.counters.sent[class].fetch_add(1, Ordering::Relaxed);
                self.counters.sent_bytes[class].fetch_add(len, Ordering::Relaxed);
            }
            if taken == 0 || !self.pending.is_empty() {
                // The inner port is full: the rest waits for the next round.
                return Ok(());
            }
        }
    }
}

impl<P: Port> Port for ScheduledPort<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        self.inner.recv(pool, batch)
    }

    fn send(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let n = batch.len();
        for f in batch.drain() {
            // Classes need the headers again (ports carry frames, not the worker's parse);
            // without rules there is nothing to parse for.
            let class = if self.classifier.rules.is_empty() {
                self.classifier.default
            } else {
                match parse_headers(pool.data(&f)) {
                    Ok(h) => self.classifier.classify(pool.data(&f), &h),
                    Err(_) => self.classifier.default,
                }
            };
            match self.sched.enqueue(class, (f, class)) {
                Ok(()) => self.queued += 1,
                Err(((f, c), cause)) => {
                    let c = c.min(self.counters.sent.len() - 1);
                    match cause {
                        DropCause::Red => &self.counters.red_drops[c],
                        _ => &self.counters.tail_drops[c],
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    pool.free(f);
                }
            }
        }
        self.flush(pool)?;
        Ok(n)
    }

    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        let n = self.inner.reclaim(pool);
        // Errors resurface on the next send; here there is nothing to report them to.
        let _ = self.flush(pool);
        n
    }

    fn held(&self) -> usize {
        self.inner.held() + self.queued + self.pending.len()
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wait_fd()
    }

    fn release(&mut self, pool: &mut BufferPool) {
        for (f, _) in self.sched.drain() {
            pool.free(f);
        }
        self.queued = 0;
        for f in self.pending.drain() {
            pool.free(f);
        }
        self.pending_meta.clear();
        self.inner.release(pool);
    }

    fn kept_by_kernel(&self) -> usize {
        self.inner.kept_by_kernel()
    }

    fn due_in(&mut self) -> Option<std::time::Duration> {
        if !self.pending.is_empty() {
            // The inner port was full: try again shortly.
            return Some(std::time::Duration::from_micros(20));
        }
        let now = self.now();
        self.sched
            .next_ready(now)
            .map(|t| std::time::Duration::from_nanos(t.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::MemPort;
    use crate::sched::{ClassRule, Discipline, DropPolicy, QueueLimit};

    fn frame(pool: &mut BufferPool, dport: u16) -> Frame {
        let bytes = crate::synthetic::udp4_frame(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            1000,
            dport,
            1000,
            0,
        );
        let mut f = pool.alloc().unwrap();
        pool.fill(&mut f, &bytes);
        f
    }

    #[test]
    fn wrr_classes_share_the_port_and_every_frame_is_accounted() {
        let mut pool = BufferPool::new(4096, 2048).unwrap();
        // A wire of 30 slots: the scheduler holds what the inner port cannot take.
        let (inner, mut wire) = MemPort::new("out", 30);
        let sched = Scheduler::new(
            Discipline::Wrr(vec![1, 2]),
            DropPolicy::TailDrop,
            QueueLimit {
                packets: 500,
                bytes: 1 << 24,
            },
            None,
        )
        .unwrap();
        let classifier = Classifier {
            rules: vec!["class 1 udp any any dport 2".parse::<ClassRule>().unwrap()],
            default: 0,
        };
        let counters = SchedCounters::new(2);
        let mut port = ScheduledPort::new(inner, sched, classifier, counters.clone());
        let mut b = Batch::new(256);
        for i in 0..1200 {
            b.push(frame(&mut pool, 1 + (i % 2) as u16)).unwrap();
            if b.is_full() {
                assert_eq!(port.send(&mut pool, &mut b).unwrap(), 256);
            }
        }
        port.send(&mut pool, &mut b).unwrap();
        // Every offered frame is dropped (and back in the pool), queued, waiting for the
        // wire, or on it.
        let load = |v: &Vec<AtomicU64>, c: usize| v[c].load(Ordering::Relaxed);
        let drops = load(&counters.tail_drops, 0) + load(&counters.tail_drops, 1);
        assert!(drops > 0, "1200 frames do not fit 2 x 500 + the wire");
        // (A MemPort counts the frames on its wire as held.)
        assert_eq!(pool.available() + port.held(), 4096);
        // On the wire, WRR 1:2 gives class 1 (dport 2) twice the frames of class 0.
        let (mut c0, mut c1) = (0, 0);
        for _ in 0..10 {
            for f in wire.drain_sent(&mut pool) {
                match f[37] {
                    1 => c0 += 1,
                    2 => c1 += 1,
                    other => panic!("dport {other}"),
                }
            }
            port.reclaim(&mut pool);
        }
        assert!(
            c0 > 100 && (c1 as i64 - 2 * c0 as i64).abs() <= 2,
            "{c0} : {c1}"
        );
        assert_eq!(
            load(&counters.sent, 0) + load(&counters.sent, 1),
            c0 + c1 + wire.pending_sent() as u64
        );
        assert_eq!(pool.available() + port.held(), 4096);
        wire.drain_sent(&mut pool);
        port.release(&mut pool);
        assert_eq!(pool.available(), 4096);
    }

    #[test]
    fn live_settings_change_the_shares_of_a_running_port_and_are_checked_first() {
        let mut pool = BufferPool::new(4096, 2048).unwrap();
        let (inner, mut wire) = MemPort::new("out", 30);
        let limit = QueueLimit {
            packets: 2000,
            bytes: 1 << 24,
        };
        let sched = Scheduler::new(
            Discipline::Wrr(vec![1, 1]),
            DropPolicy::TailDrop,
            limit,
            None,
        );
        let classifier = Classifier {
            rules: vec!["class 1 udp any any dport 2".parse::<ClassRule>().unwrap()],
            default: 0,
        };
        let live = LiveSettings::new(2, 1);
        let mut port = ScheduledPort::new(inner, sched.unwrap(), classifier, SchedCounters::new(2))
            .with_live(live.clone());
        // Refused before any worker sees them: a class count the port does not have, a zero
        // weight, a shaper whose burst cannot hold a packet.
        assert!(live.publish(Discipline::Wrr(vec![1, 2, 3]), None).is_err());
        assert!(live.publish(Discipline::Wrr(vec![0, 1]), None).is_err());
        assert!(
            live.publish(Discipline::Fcfs, None).is_err(),
            "two classes, not one"
        );
        assert!(
            live.publish(Discipline::Wrr(vec![1, 1]), Some((1e6, 0)))
                .is_err()
        );
        assert_eq!(live.publish(Discipline::Wrr(vec![1, 3]), None), Ok(1));

        let mut b = Batch::new(256);
        for i in 0..1024 {
            b.push(frame(&mut pool, 1 + (i % 2) as u16)).unwrap();
            if b.is_full() {
                port.send(&mut pool, &mut b).unwrap();
            }
        }
        let (mut c0, mut c1) = (0i64, 0i64);
        for _ in 0..10 {
            for f in wire.drain_sent(&mut pool) {
                match f[37] {
                    1 => c0 += 1,
                    _ => c1 += 1,
                }
            }
            port.reclaim(&mut pool);
        }
        // WRR 1:3 from the first flush on, not the 1:1 the port started with.
        assert!(c0 > 50 && (c1 - 3 * c0).abs() <= 3, "{c0} : {c1}");
        wire.drain_sent(&mut pool);
        port.release(&mut pool);
        assert_eq!(pool.available(), 4096);
    }
}
