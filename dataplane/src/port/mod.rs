//! Packet I/O behind one trait, and the in-memory ports tests and benches are built on.
//!
//! A [`Port`] moves frames of the worker's [`BufferPool`] in and out: `recv` appends received
//! frames to a batch; `send` takes frames from the front of a batch and leaves those it could
//! not take there, for the caller to account for. A port that keeps frames after `send`
//! (a ring waiting for the wire, a test queue) reports them in [`Port::held`] and gives them
//! back in [`Port::release`], so a worker can prove after any run that every frame is in
//! exactly one place.

mod scheduled;
mod xsk;
pub use scheduled::{LiveSettings, SchedCounters, ScheduledPort};
pub use xsk::XskPort;

use crate::batch::Batch;
use crate::frame::{BufferPool, Frame};
use crate::ring::{self, Consumer, Producer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PortError {
    #[error("port {port}: {op} failed")]
    Io {
        port: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Packet I/O for one worker. Implementations never allocate per packet.
pub trait Port: Send {
    fn name(&self) -> &str;

    /// Appends up to `batch.room()` received frames to `batch`; returns how many.
    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError>;

    /// Takes frames from the front of `batch` for transmission; the frames it did not take
    /// stay in `batch`, in order. Returns how many it took.
    fn send(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError>;

    /// Returns frames whose transmission completed to `pool`; returns how many.
    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        let _ = pool;
        0
    }

    /// Frames of the pool this port holds right now.
    fn held(&self) -> usize;

    /// A descriptor that polls readable when the port has something to receive, so an idle
    /// worker can sleep in `poll(2)` instead of sleeping blind; `None` for ports without one.
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Gives every held frame back to `pool` (at shutdown).
    fn release(&mut self, pool: &mut BufferPool);

    /// How soon the port wants the worker back to release frames it holds back (a shaped
    /// output); `None` when nothing waits. An idle worker sleeps no longer than this.
    fn due_in(&mut self) -> Option<std::time::Duration> {
        None
    }

    /// After `release`: how many frames the kernel may have kept where the port cannot get
    /// them back. Observed on this kernel for copy-mode AF_XDP: a socket whose RX ring
    /// overflowed during the run sometimes comes back exactly one FILL buffer short at close,
    /// even with traffic steered away first; not reproduced by overflowing the ring alone
    /// (`tests/xsk.rs`), so the cause is not pinned down. `XskPort` says 1 for such a socket.
    fn kept_by_kernel(&self) -> usize {
        0
    }

    /// Whether every frame this port receives belongs to a flow its worker owns (the source
    /// steers by the same jump hash, as a NIC's RSS can be programmed to): the worker then
    /// skips working the owner out per packet.
    fn arrives_at_owner(&self) -> bool {
        false
    }
}

impl<P: Port + ?Sized> Port for Box<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        (**self).recv(pool, batch)
    }
    fn send(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        (**self).send(pool, batch)
    }
    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        (**self).reclaim(pool)
    }
    fn held(&self) -> usize {
        (**self).held()
    }
    fn release(&mut self, pool: &mut BufferPool) {
        (**self).release(pool)
    }
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).wait_fd()
    }
    fn kept_by_kernel(&self) -> usize {
        (**self).kept_by_kernel()
    }
    fn due_in(&mut self) -> Option<std::time::Duration> {
        (**self).due_in()
    }
    fn arrives_at_owner(&self) -> bool {
        (**self).arrives_at_owner()
    }
}

/// Why [`MemWire::inject`] refused a packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("port {port}: receive ring full ({capacity} frames)")]
    QueueFull { port: String, capacity: usize },
    #[error("port {port}: buffer pool exhausted")]
    PoolExhausted { port: String },
}

/// A port whose "cable" is a pair of bounded SPSC rings of frame descriptors. The far end of
/// the cable is a [`MemWire`]: what the wire injects comes out of `recv`, and what the port
/// sends waits on the wire until taken. The two halves may live on different threads; the
/// frames stay in the pool of the worker that owns the port.
pub struct MemPort {
    name: String,
    rx: Consumer<Frame>,
    tx: Producer<Frame>,
}

/// The far end of a [`MemPort`]'s cable.
pub struct MemWire {
    name: String,
    rx: Producer<Frame>,
    tx: Consumer<Frame>,
}

impl MemPort {
    /// A port and its wire, each direction holding at most `capacity` frames (rounded up to a
    /// power of two). All memory is allocated here.
    pub fn new(name: impl Into<String>, capacity: usize) -> (MemPort, MemWire) {
        let name = name.into();
        let (rx_p, rx_c) = ring::channel(capacity, || Frame::EMPTY);
        let (tx_p, tx_c) = ring::channel(capacity, || Frame::EMPTY);
        (
            MemPort {
                name: name.clone(),
                rx: rx_c,
                tx: tx_p,
            },
            MemWire {
                name,
                rx: rx_p,
                tx: tx_c,
            },
        )
    }
}

impl MemWire {
    /// Copies `bytes` into a frame of `pool` (the pool of the worker that owns the port) and
    /// queues it for the port's `recv`.
    pub fn inject(&mut self, pool: &mut BufferPool, bytes: &[u8]) -> Result<(), InjectError> {
        if self.rx.free_slots() == 0 {
            return Err(InjectError::QueueFull {
                port: self.name.clone(),
                capacity: self.rx.capacity(),
            });
        }
        let mut f = pool.alloc().ok_or_else(|| InjectError::PoolExhausted {
            port: self.name.clone(),
        })?;
        pool.fill(&mut f, bytes);
        let wrote = self.rx.try_write(|slot| *slot = f);
        debug_assert!(
            wrote,
            "free slot checked above and we are the only producer"
        );
        Ok(())
    }

    /// The oldest frame the port sent, if any; the caller owns it now.
    pub fn take_sent(&mut self) -> Option<Frame> {
        self.tx
            .try_read(|slot| std::mem::replace(slot, Frame::EMPTY))
    }

    /// Copies out and frees every frame the port sent (test convenience).
    pub fn drain_sent(&mut self, pool: &mut BufferPool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.take_sent() {
            out.push(pool.data(&f).to_vec());
            pool.free(f);
        }
        out
    }

    /// Frames injected but not yet received by the port.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// Frames the port sent that nobody has taken off the wire yet.
    pub fn pending_sent(&self) -> usize {
        self.tx.len()
    }
}

impl Port for MemPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let mut n = 0;
        while !batch.is_full() {
            let Some(f) = self
                .rx
                .try_read(|slot| std::mem::replace(slot, Frame::EMPTY))
            else {
                break;
            };
            // Cannot fail (we checked `is_full`); freeing keeps the frame accounted if it did.
            if let Err(f) = batch.push(f) {
                pool.free(f);
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, _pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        // Take only as many as there are free slots, so every `try_write` below succeeds and
        // no frame is lost inside a closure that was not called.
        let n = batch.len().min(self.tx.free_slots());
        for f in batch.drain_front(n) {
            let wrote = self.tx.try_write(|slot| *slot = f);
            debug_assert!(wrote, "free slots counted above");
        }
        Ok(n)
    }

    fn held(&self) -> usize {
        self.rx.len() + self.tx.len()
    }

    fn release(&mut self, pool: &mut BufferPool) {
        // Frames still on the transmit side belong to whoever holds the wire.
        while let Some(f) = self
            .rx
            .try_read(|slot| std::mem::replace(slot, Frame::EMPTY))
        {
            pool.free(f);
        }
    }
}

/// Probabilities, in parts per million, of each fault a [`FaultPort`] injects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// A received frame is freed instead of delivered.
    pub drop_ppm: u32,
    /// One bit of a received frame is flipped.
    pub corrupt_ppm: u32,
    /// A received frame is delivered twice.
    pub duplicate_ppm: u32,
    /// A received frame swaps places with the one before it.
    pub reorder_ppm: u32,
    /// A `send` offers the inner port only part of the batch (a short write).
    pub short_send_ppm: u32,
}

/// How many faults a [`FaultPort`] injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub short_sends: u64,
}

/// Wraps a port and injects faults into what it receives and sends, from a seeded generator
/// so that a failing test replays exactly.
pub struct FaultPort<P> {
    inner: P,
    faults: Faults,
    dice: Dice,
    counts: FaultCounts,
    scratch: Batch,
}

/// xorshift64*: fast, seedable, good enough for fault dice.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn roll(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next() % 1_000_000) < ppm as u64
    }
}

impl<P: Port> FaultPort<P> {
    pub fn new(inner: P, faults: Faults, seed: u64) -> FaultPort<P> {
        FaultPort {
            inner,
            faults,
            dice: Dice(seed | 1),
            counts: FaultCounts::default(),
            scratch: Batch::new(crate::batch::MAX_BATCH),
        }
    }

    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }
}

impl<P: Port> Port for FaultPort<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let FaultPort {
            inner,
            faults,
            dice,
            counts,
            scratch,
        } = self;
        if batch.is_full() {
            return Ok(0);
        }
        scratch.set_capacity(batch.room());
        inner.recv(pool, scratch)?;
        let start = batch.len();
        for f in scratch.drain() {
            if dice.roll(faults.drop_ppm) {
                counts.dropped += 1;
                pool.free(f);
                continue;
            }
            if !f.is_empty() && dice.roll(faults.corrupt_ppm) {
                let r = dice.next();
                let data = pool.data_mut(&f);
                let i = (r as usize) % data.len();
                data[i] ^= 1 << ((r >> 32) % 8);
                counts.corrupted += 1;
            }
            let dup = if dice.roll(faults.duplicate_ppm) {
                pool.clone_frame(&f)
            } else {
                None
            };
            let reorder = batch.len() > start && dice.roll(faults.reorder_ppm);
            if let Err(f) = batch.push(f) {
                pool.free(f);
            } else if reorder {
                let n = batch.len();
                batch.swap(n - 1, n - 2);
                counts.reordered += 1;
            }
            if let Some(d) = dup {
                match batch.push(d) {
                    Ok(()) => counts.duplicated += 1,
                    Err(d) => pool.free(d),
                }
            }
        }
        Ok(batch.len() - start)
    }

    fn send(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let FaultPort {
            inner,
            faults,
            dice,
            counts,
            scratch,
        } = self;
        if batch.len() < 2 || !dice.roll(faults.short_send_ppm) {
            return inner.send(pool, batch);
        }
        counts.short_sends += 1;
        let offer = 1 + (dice.next() as usize) % (batch.len() - 1);
        // Hold back the tail that is not offered, then put it behind whatever the inner port
        // left, so the caller sees one batch in the original order.
        scratch.set_capacity(crate::batch::MAX_BATCH);
        while batch.len() > offer {
            let f = batch.pop().expect("len > offer");
            if let Err(f) = scratch.push(f) {
                pool.free(f);
            }
        }
        let sent = inner.send(pool, batch);
        while let Some(f) = scratch.pop() {
            if let Err(f) = batch.push(f) {
                pool.free(f);
            }
        }
        sent
    }

    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        self.inner.reclaim(pool)
    }

    fn held(&self) -> usize {
        self.inner.held()
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wait_fd()
    }

    fn release(&mut self, pool: &mut BufferPool) {
        self.inner.release(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> BufferPool {
        BufferPool::new(256, 256).unwrap()
    }

    fn check_all_home(pool: &BufferPool, ports: &[&dyn Port]) {
        let held: usize = ports.iter().map(|p| p.held()).sum();
        assert_eq!(pool.available() + held, pool.capacity());
    }

    #[test]
    fn mem_port_round_trip_and_full_queue() {
        let mut pool = pool();
        let (mut p, mut w) = MemPort::new("m0", 2);
        w.inject(&mut pool, &[1; 60]).unwrap();
        w.inject(&mut pool, &[2; 60]).unwrap();
        assert!(matches!(
            w.inject(&mut pool, &[3; 60]),
            Err(InjectError::QueueFull { capacity: 2, .. })
        ));
        let mut b = Batch::new(64);
        assert_eq!(p.recv(&mut pool, &mut b).unwrap(), 2);
        // The transmit ring holds 2: a third frame stays in the caller's batch.
        let mut extra = pool.alloc().unwrap();
        pool.fill(&mut extra, &[9; 60]);
        b.push(extra).unwrap();
        assert_eq!(p.send(&mut pool, &mut b).unwrap(), 2);
        assert_eq!(b.len(), 1);
        for f in b.drain() {
            pool.free(f);
        }
        check_all_home(&pool, &[&p]);
        let sent = w.drain_sent(&mut pool);
        assert_eq!(sent.iter().map(|v| v[0]).collect::<Vec<_>>(), [1, 2]);
        check_all_home(&pool, &[&p]);
    }

    #[test]
    fn fault_port_accounts_for_every_frame() {
        let mut pool = pool();
        let faults = Faults {
            drop_ppm: 100_000,
            corrupt_ppm: 100_000,
            duplicate_ppm: 100_000,
            reorder_ppm: 100_000,
            short_send_ppm: 300_000,
        };
        let (mp, mut wire) = MemPort::new("f0", 128);
        let mut fp = FaultPort::new(mp, faults, 42);
        let mut delivered = 0;
        let mut b = Batch::new(32);
        for round in 0..50u8 {
            for i in 0..32u8 {
                wire.inject(&mut pool, &[round, i, 0, 0]).unwrap();
            }
            delivered += fp.recv(&mut pool, &mut b).unwrap();
            // Send through the (short-writing) port until it took everything.
            while !b.is_empty() {
                fp.send(&mut pool, &mut b).unwrap();
                let _ = wire.drain_sent(&mut pool);
            }
            // Whatever the fault port did not deliver this round is still queued inside.
            fp.release(&mut pool);
            check_all_home(&pool, &[&fp]);
        }
        let c = fp.counts();
        assert!(c.dropped > 0 && c.corrupted > 0 && c.duplicated > 0 && c.reordered > 0);
        assert!(c.short_sends > 0);
        assert!(delivered > 0);
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn fault_port_is_reproducible_from_seed() {
        let run = |seed| {
            let mut pool = pool();
            let faults = Faults {
                drop_ppm: 200_000,
                reorder_ppm: 200_000,
                ..Faults::default()
            };
            let (mp, mut wire) = MemPort::new("f", 64);
            let mut fp = FaultPort::new(mp, faults, seed);
            for i in 0..64u8 {
                wire.inject(&mut pool, &[i]).unwrap();
            }
            let mut b = Batch::new(64);
            fp.recv(&mut pool, &mut b).unwrap();
            let order: Vec<u8> = b.as_slice().iter().map(|f| pool.data(f)[0]).collect();
            for f in b.drain() {
                pool.free(f);
            }
            order
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
