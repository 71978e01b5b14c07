//! The thread-per-core runtime: one pinned worker per core, run to completion.
//!
//! Each loop round a worker receives a batch from each of its ports and from each handoff
//! ring, parses every packet once, shards it (sequential mapping sends packets of flows owned
//! by another worker across a handoff ring), asks the switching logic for a verdict, groups the
//! batch by destination in the [`Fabric`] and visits only the destinations that received
//! something: ports, broadcast, the kernel path, drops, handoff rings. Then it reclaims
//! completed transmissions and publishes its counters.
//!
//! A worker owns everything it touches — pool, ports, logic, fabric, counters — and shares
//! only the handoff rings and its published counters. It never blocks on another worker and
//! never allocates once built. When a round moved nothing it spins for a bounded number of
//! rounds, then sleeps with a growing back-off, so its CPU use follows the load.

use crate::batch::{Batch, MAX_BATCH};
use crate::counters::{Counts, WorkerCounters};
use crate::fabric::Fabric;
use crate::frame::BufferPool;
use crate::logic::Logic;
use crate::port::{Port, PortError};
use crate::shard::{HandoffRx, HandoffTx, Mapping, flow_hash, jump_hash};
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::{self, Headers, parse_headers_into};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(
        "worker {worker}: cannot pin to core {core} (sched_setaffinity failed or no such core)"
    )]
    Pin { worker: usize, core: usize },
    #[error("worker {worker}: {source}")]
    Port {
        worker: usize,
        #[source]
        source: PortError,
    },
    #[error("worker {worker}: could not start thread")]
    Spawn {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker}: {what}")]
    Config { worker: usize, what: String },
}

/// When a worker with nothing to do stops spinning and starts sleeping. Workers whose ports can
/// all be waited on (AF_XDP sockets) sleep in `poll(2)` on them, so the sleep ends as soon as
/// traffic arrives; `max_sleep` then only bounds how long a packet handed over from another
/// worker can wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Empty rounds spent spinning before the first sleep.
    pub spin_rounds: u32,
    /// Longest single sleep; sleeps double from a few microseconds up to this.
    pub max_sleep: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            spin_rounds: 2048,
            max_sleep: Duration::from_millis(1),
        }
    }
}

/// Static settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's index, `0..workers`.
    pub id: usize,
    /// Number of workers sharing the flows.
    pub workers: usize,
    /// Frames per receive batch (1..=MAX_BATCH).
    pub batch: usize,
    pub mapping: Mapping,
    /// The port that reaches the host stack, for [`Verdict::ToKernel`]; none means such packets
    /// are dropped as [`DropReason::NoKernelPath`].
    pub kernel_port: Option<PortId>,
    pub idle: IdlePolicy,
}

/// Where every frame of a finished worker is, and what it counted.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub id: usize,
    pub counts: Counts,
    /// Frames in the pool's free list when the worker stopped.
    pub pool_free: usize,
    /// Frames held by ports when the worker stopped (before release).
    pub port_held: usize,
    pub pool_capacity: usize,
    /// Packets still waiting in this worker's incoming handoff rings (copies, not frames).
    pub handoff_pending: usize,
    /// Frames in the free list after every port gave back what it held: the whole pool,
    /// unless a port lost track of a frame or the kernel kept some (`kernel_kept`).
    pub free_after_release: usize,
    /// Frames missing after release that ports attribute to the kernel (see
    /// [`Port::kept_by_kernel`]); 0 unless an AF_XDP RX ring overflowed during the run.
    pub kernel_kept: usize,
}

impl WorkerReport {
    /// True when every frame of the pool is back in exactly one place.
    pub fn frames_accounted(&self) -> bool {
        self.pool_free + self.port_held == self.pool_capacity
    }

    /// True when, after release, every frame is back in the pool or attributed to the kernel.
    pub fn frames_returned(&self) -> bool {
        self.free_after_release + self.kernel_kept == self.pool_capacity
    }
}

/// One worker: its pool, ports, logic and handoff rings.
pub struct Worker<L> {
    cfg: WorkerConfig,
    pool: BufferPool,
    ports: Vec<Box<dyn Port>>,
    logic: L,
    fabric: Fabric,
    /// Indexed by destination worker; `None` at our own index.
    handoff_tx: Vec<Option<HandoffTx>>,
    handoff_rx: Vec<HandoffRx>,
    counts: Counts,
    shared: Arc<WorkerCounters>,
    /// Per-slot parse results of the batch being processed (slot `i` for `rx[i]`).
    parsed: Box<[Result<Headers, wire::Error>; MAX_BATCH]>,
    /// Per-slot destination of the batch being processed, for [`Fabric::push_batch`].
    dest_of: Box<[u32; MAX_BATCH]>,
    rx: Batch,
    tx: Batch,
    started: Instant,
    idle_rounds: u32,
    sleep: Duration,
    /// One entry per port when every port has a descriptor to wait on (AF_XDP sockets): the
    /// idle worker then sleeps in `poll(2)` and wakes when traffic arrives.
    wait: Vec<libc::pollfd>,
}

/// Destination numbering in the fabric: ports first, then the pseudo-destinations.
struct Dests {
    ports: usize,
}

impl Dests {
    fn broadcast(&self) -> usize {
        self.ports
    }
    fn kernel(&self) -> usize {
        self.ports + 1
    }
    fn drop(&self) -> usize {
        self.ports + 2
    }
    fn handoff(&self, worker: usize) -> usize {
        self.ports + 3 + worker
    }
    fn total(&self, workers: usize) -> usize {
        self.ports + 3 + workers
    }

    /// The destination of any verdict but a forward to an existing port (kept out of the
    /// per-packet loop, which tests only for that common case).
    #[cold]
    #[inline(never)]
    fn other(&self, verdict: Verdict, counts: &mut Counts) -> usize {
        match verdict {
            Verdict::Forward(p) if (p as usize) < self.ports => p as usize,
            Verdict::Forward(_) => {
                counts.drop(DropReason::NoRoute, 1);
                self.drop()
            }
            Verdict::Broadcast => self.broadcast(),
            Verdict::ToKernel => self.kernel(),
            Verdict::Drop(reason) => {
                counts.drop(reason, 1);
                self.drop()
            }
        }
    }
}

/// Builds the handoff rings between `workers` workers: `tx[a][b]` sends from `a` to `b`
/// (`None` when `a == b`) and `rx[b]` holds every ring into `b`.
pub fn handoff_mesh(
    workers: usize,
    slots: usize,
    frame_size: usize,
) -> (Vec<Vec<Option<HandoffTx>>>, Vec<Vec<HandoffRx>>) {
    let mut tx: Vec<Vec<Option<HandoffTx>>> = (0..workers).map(|_| Vec::new()).collect();
    let mut rx: Vec<Vec<HandoffRx>> = (0..workers).map(|_| Vec::new()).collect();
    for (a, row) in tx.iter_mut().enumerate() {
        for (b, into_b) in rx.iter_mut().enumerate() {
            if a == b {
                row.push(None);
            } else {
                let (t, r) = crate::shard::Handoff::channel(slots, frame_size);
                row.push(Some(t));
                into_b.push(r);
            }
        }
    }
    (tx, rx)
}

impl<L: Logic> Worker<L> {
    pub fn new(
        cfg: WorkerConfig,
        pool: BufferPool,
        ports: Vec<Box<dyn Port>>,
        logic: L,
        handoff_tx: Vec<Option<HandoffTx>>,
        handoff_rx: Vec<HandoffRx>,
    ) -> Result<Worker<L>, WorkerError> {
        let bad = |what: String| WorkerError::Config {
            worker: cfg.id,
            what,
        };
        if ports.is_empty() || ports.len() > PortId::MAX as usize {
            return Err(bad(format!(
                "needs 1 to {} ports, got {}",
                PortId::MAX,
                ports.len()
            )));
        }
        if cfg.workers == 0 || cfg.id >= cfg.workers {
            return Err(bad(format!(
                "id {} out of range for {} workers",
                cfg.id, cfg.workers
            )));
        }
        if !(1..=MAX_BATCH).contains(&cfg.batch) {
            return Err(bad(format!("batch {} not in 1..={MAX_BATCH}", cfg.batch)));
        }
        if cfg.mapping == Mapping::Sequential && cfg.workers > 1 && handoff_tx.len() != cfg.workers
        {
            return Err(bad(format!(
                "sequential mapping over {} workers needs a handoff ring to each, got {}",
                cfg.workers,
                handoff_tx.len()
            )));
        }
        if let Some(k) = cfg.kernel_port.filter(|&k| k as usize >= ports.len()) {
            return Err(bad(format!("kernel port {k} does not exist")));
        }
        let fds: Vec<_> = ports.iter().map(|p| p.wait_fd()).collect();
        let wait = if fds.iter().all(Option::is_some) {
            fds.into_iter()
                .flatten()
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect()
        } else {
            Vec::new()
        };
        let dests = Dests { ports: ports.len() };
        Ok(Worker {
            fabric: Fabric::new(dests.total(cfg.workers), MAX_BATCH),
            rx: Batch::new(cfg.batch),
            tx: Batch::new(MAX_BATCH),
            cfg,
            pool,
            ports,
            logic,
            handoff_tx,
            handoff_rx,
            counts: Counts::default(),
            shared: Arc::new(WorkerCounters::default()),
            parsed: Box::new([Err(wire::Error::Truncated); MAX_BATCH]),
            dest_of: Box::new([0; MAX_BATCH]),
            started: Instant::now(),
            idle_rounds: 0,
            sleep: Duration::ZERO,
            wait,
        })
    }

    /// The published counters, for a reader on another thread.
    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.shared.clone()
    }

    pub fn id(&self) -> usize {
        self.cfg.id
    }

    pub fn logic_mut(&mut self) -> &mut L {
        &mut self.logic
    }

    pub fn port_mut(&mut self, id: PortId) -> Option<&mut (dyn Port + 'static)> {
        self.ports.get_mut(id as usize).map(|p| &mut **p)
    }

    pub fn pool_mut(&mut self) -> &mut BufferPool {
        &mut self.pool
    }

    /// Counters so far (also published).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// One loop round; returns the number of packets received (from ports and handoff).
    pub fn poll_once(&mut self) -> Result<usize, WorkerError> {
        #[cfg(feature = "slow-worker-for-tests")]
        for i in 0..4096u32 {
            std::hint::black_box(i);
        }
        let now = self.started.elapsed();
        self.logic.tick(now);
        let mut moved = 0;
        for p in 0..self.ports.len() {
            self.rx.set_capacity(self.cfg.batch);
            let n = self.ports[p]
                .recv(&mut self.pool, &mut self.rx)
                .map_err(|source| WorkerError::Port {
                    worker: self.cfg.id,
                    source,
                })?;
            if n > 0 {
                moved += n;
                self.counts.rx += n as u64;
                self.process(p as PortId, false)?;
            }
        }
        for r in 0..self.handoff_rx.len() {
            // At most four batches per ring per round, so a busy neighbour cannot starve our
            // own ports.
            for _ in 0..4 {
                self.rx.set_capacity(self.cfg.batch);
                let Some(in_port) = self.handoff_rx[r].pop_into(&mut self.pool, &mut self.rx)
                else {
                    break;
                };
                let n = self.rx.len();
                if n == 0 {
                    break;
                }
                moved += n;
                self.counts.handoff_in += n as u64;
                self.process(in_port, true)?;
            }
        }
        for port in &mut self.ports {
            port.reclaim(&mut self.pool);
        }
        if moved > 0 {
            self.counts.busy_rounds += 1;
        }
        self.shared.publish(&self.counts);
        Ok(moved)
    }

    /// Runs rounds until `stop` is set, then reports.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), WorkerError> {
        while !stop.load(Ordering::Relaxed) {
            let moved = self.poll_once()?;
            self.idle(moved);
        }
        Ok(())
    }

    fn idle(&mut self, moved: usize) {
        if moved > 0 {
            self.idle_rounds = 0;
            self.sleep = Duration::ZERO;
            return;
        }
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        if self.idle_rounds <= self.cfg.idle.spin_rounds {
            std::hint::spin_loop();
            return;
        }
        // A port holding frames back (shaping) must be visited when they are due.
        let due = self.ports.iter_mut().filter_map(|p| p.due_in()).min();
        if due.is_some_and(|d| d.is_zero()) {
            std::hint::spin_loop();
            return;
        }
        self.sleep = (self.sleep * 2)
            .max(Duration::from_micros(4))
            .min(self.cfg.idle.max_sleep)
            .min(due.unwrap_or(Duration::MAX));
        self.counts.sleeps += 1;
        if self.wait.is_empty() || due.is_some() {
            // Also when frames are due at a set time: poll(2) rounds its timeout up to whole
            // milliseconds, too coarse for a shaper; new arrivals wait at most this long.
            std::thread::sleep(self.sleep);
        } else if crate::sys::poll_readable(&mut self.wait, self.sleep).is_err() {
            // poll(2) on our own sockets failing is not worth stopping for: sleep instead.
            std::thread::sleep(self.sleep);
        }
    }

    /// Stops the worker for good: returns every frame ports hold to the pool and reports where
    /// frames were.
    pub fn finish(mut self) -> WorkerReport {
        for port in &mut self.ports {
            port.reclaim(&mut self.pool);
        }
        let port_held = self.ports.iter().map(|p| p.held()).sum();
        let pool_free = self.pool.available();
        for port in &mut self.ports {
            port.release(&mut self.pool);
        }
        let free_after_release = self.pool.available();
        let kernel_kept = (self.pool.capacity() - free_after_release)
            .min(self.ports.iter().map(|p| p.kept_by_kernel()).sum());
        let handoff_pending = self.handoff_rx.iter_mut().map(|r| r.ready()).sum();
        self.shared.publish(&self.counts);
        WorkerReport {
            id: self.cfg.id,
            counts: self.counts,
            pool_free,
            port_held,
            pool_capacity: self.pool.capacity(),
            handoff_pending,
            free_after_release,
            kernel_kept,
        }
    }

    /// Parse, shard, decide and dispatch the batch in `self.rx`, which arrived on `in_port`.
    fn process(&mut self, in_port: PortId, from_handoff: bool) -> Result<(), WorkerError> {
        let Worker {
            cfg,
            pool,
            ports,
            logic,
            fabric,
            handoff_tx,
            counts,
            parsed,
            dest_of,
            rx,
            tx,
            ..
        } = self;
        let dests = Dests { ports: ports.len() };
        let shard = cfg.mapping == Mapping::Sequential
            && cfg.workers > 1
            && !from_handoff
            && !ports
                .get(in_port as usize)
                .is_some_and(|p| p.arrives_at_owner());
        let me = cfg.id;

        // Phase 1, in two passes over the batch so that memory stalls overlap: parse every
        // packet and let the logic prefetch the table entries it will read, then decide. The
        // destinations go to a dense array the fabric groups in one tight loop.
        let mut rx_bytes = 0;
        for (p, frame) in parsed.iter_mut().zip(rx.as_slice()) {
            rx_bytes += frame.len() as u64;
            parse_headers_into(pool.data(frame), p);
            if let Ok(h) = p {
                logic.prefetch(h);
            }
        }
        counts.rx_bytes += rx_bytes;
        let parsed = &parsed[..rx.len()];
        for ((p, frame), dest) in parsed.iter().zip(rx.as_slice()).zip(dest_of.iter_mut()) {
            *dest = match p {
                Err(_) => {
                    counts.drop(DropReason::Malformed, 1);
                    dests.drop()
                }
                Ok(h) => {
                    let bytes = pool.data_mut(frame);
                    let owner = if shard {
                        jump_hash(flow_hash(h, bytes), cfg.workers as u32) as usize
                    } else {
                        me
                    };
                    if owner != me {
                        dests.handoff(owner)
                    } else {
                        match logic.decide(bytes, h, in_port) {
                            Verdict::Forward(p) if (p as usize) < dests.ports => p as usize,
                            v => dests.other(v, counts),
                        }
                    }
                }
            } as u32;
        }
        fabric.push_batch(&dest_of[..rx.len()]);

        // Phase 2: visit only the destinations that received something.
        let mut result = Ok(());
        for &d in fabric.active() {
            let d = d as usize;
            if d < dests.ports {
                tx.take_from(rx, fabric.slots(d), pool);
                if let Err(e) = send(&mut ports[d], pool, tx, counts) {
                    result = Err(WorkerError::Port {
                        worker: me,
                        source: e,
                    });
                }
            } else if d == dests.broadcast() {
                for (q, port) in ports.iter_mut().enumerate() {
                    if q == in_port as usize {
                        continue;
                    }
                    for s in fabric.slots(d) {
                        match pool.clone_frame(&rx.as_slice()[s]) {
                            Some(c) => push_or_free(tx, pool, c),
                            None => counts.drop(DropReason::PoolExhausted, 1),
                        }
                    }
                    if let Err(e) = send(port, pool, tx, counts) {
                        result = Err(WorkerError::Port {
                            worker: me,
                            source: e,
                        });
                    }
                }
                for s in fabric.slots(d) {
                    pool.free(rx.take(s));
                }
            } else if d == dests.kernel() {
                match cfg.kernel_port {
                    Some(k) => {
                        for s in fabric.slots(d) {
                            push_or_free(tx, pool, rx.take(s));
                        }
                        if let Err(e) = send(&mut ports[k as usize], pool, tx, counts) {
                            result = Err(WorkerError::Port {
                                worker: me,
                                source: e,
                            });
                        }
                    }
                    None => {
                        for s in fabric.slots(d) {
                            pool.free(rx.take(s));
                            counts.drop(DropReason::NoKernelPath, 1);
                        }
                    }
                }
            } else if d == dests.drop() {
                for s in fabric.slots(d) {
                    pool.free(rx.take(s));
                }
            } else {
                let w = d - dests.handoff(0);
                let ring = handoff_tx[w]
                    .as_mut()
                    .expect("handoff ring to every other worker");
                for s in fabric.slots(d) {
                    match ring.push(pool, rx.take(s), in_port) {
                        Ok(()) => counts.handoff_out += 1,
                        Err(f) => {
                            pool.free(f);
                            counts.drop(DropReason::HandoffFull, 1);
                        }
                    }
                }
                ring.flush();
            }
        }
        fabric.clear();
        rx.forget_taken();
        result
    }
}

#[inline]
fn push_or_free(tx: &mut Batch, pool: &mut BufferPool, f: crate::frame::Frame) {
    // `tx` holds MAX_BATCH and a received batch is at most that, so this never frees in
    // practice; freeing keeps the invariant even if it did.
    if let Err(f) = tx.push(f) {
        pool.free(f);
    }
}

/// Sends `tx` out of `port`; what the port refuses is dropped as [`DropReason::TxFull`].
#[inline]
fn send(
    port: &mut Box<dyn Port>,
    pool: &mut BufferPool,
    tx: &mut Batch,
    counts: &mut Counts,
) -> Result<(), PortError> {
    let offered = tx.len();
    let bytes: u64 = tx.as_slice().iter().map(|f| f.len() as u64).sum();
    let r = port.send(pool, tx);
    let left = tx.len();
    counts.tx += (offered - left) as u64;
    counts.tx_bytes += bytes;
    if left > 0 {
        counts.drop(DropReason::TxFull, left as u64);
        for f in tx.drain() {
            counts.tx_bytes -= f.len() as u64;
            pool.free(f);
        }
    }
    r.map(|_| ())
}

/// Runs `worker` on its own thread, pinned to `core` if given, until `stop` is set.
pub fn spawn<L: Logic + Send + 'static>(
    mut worker: Worker<L>,
    core: Option<usize>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<WorkerReport, WorkerError>>, WorkerError> {
    let id = worker.cfg.id;
    std::thread::Builder::new()
        .name(format!("linerate-w{id}"))
        .spawn(move || {
            if let Some(core) = core {
                pin(id, core)?;
            }
            let r = worker.run(&stop);
            let report = worker.finish();
            r.map(|()| report)
        })
        .map_err(|source| WorkerError::Spawn { worker: id, source })
}

/// Pins the calling thread to `core`.
pub fn pin(worker: usize, core: usize) -> Result<(), WorkerError> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == core)
        .ok_or(WorkerError::Pin { worker, core })?;
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(WorkerError::Pin { worker, core })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::MemPort;
    use crate::verdict::Verdict;
    use crate::wire::Headers;

    struct Nothing;
    impl Logic for Nothing {
        fn decide(&mut self, _: &mut [u8], _: &Headers, _: PortId) -> Verdict {
            Verdict::Drop(DropReason::NoRoute)
        }
    }

    #[test]
    fn idle_worker_spins_a_bounded_number_of_rounds_then_sleeps() {
        let (port, _wire) = MemPort::new("idle", 8);
        let cfg = WorkerConfig {
            id: 0,
            workers: 1,
            batch: 8,
            mapping: Mapping::Concurrent,
            kernel_port: None,
            idle: IdlePolicy {
                spin_rounds: 3,
                max_sleep: Duration::from_micros(20),
            },
        };
        let pool = BufferPool::new(64, 256).unwrap();
        let mut w =
            Worker::new(cfg, pool, vec![Box::new(port)], Nothing, vec![None], vec![]).unwrap();
        for _ in 0..10 {
            let moved = w.poll_once().unwrap();
            w.idle(moved);
        }
        assert_eq!(
            w.counts().sleeps,
            7,
            "3 spinning rounds, then a sleep per empty round"
        );
        // Work resets the back-off.
        w.idle(1);
        assert_eq!(w.idle_rounds, 0);
        assert_eq!(w.sleep, Duration::ZERO);
    }
}
