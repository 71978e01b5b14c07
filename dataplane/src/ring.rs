//! Bounded single-producer/single-consumer rings: the only way data crosses between workers.
//!
//! [`channel`] gives a [`Producer`] and a [`Consumer`] over a power-of-two array of slots that
//! are always initialised: values are written and read *in place* through closures, so a slot
//! holding a whole packet (see [`crate::shard::Handoff`]) is never moved. A full ring refuses
//! the write and the caller keeps what it wanted to send; nothing here blocks or allocates
//! after construction.
//!
//! Each side caches the other side's index and re-reads the shared atomic only when the cache
//! says full (producer) or empty (consumer), so in steady state the two cores touch each
//! other's cache line about once per batch rather than once per item. Modelled with loom in
//! `tests/loom_ring.rs` (`RUSTFLAGS="--cfg loom" cargo test --release --test loom_ring`).
#![allow(unsafe_code)]

use self::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

#[cfg(loom)]
mod sync {
    pub use loom::cell::UnsafeCell;
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicUsize, Ordering};
}

#[cfg(not(loom))]
mod sync {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicUsize, Ordering};

    /// `std::cell::UnsafeCell` with loom's closure-based API, so one body serves both.
    #[derive(Debug)]
    pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub fn new(v: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(v))
        }
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Keeps the producer's and consumer's indices on different cache lines.
#[repr(align(128))]
struct Padded<T>(T);

struct Shared<T> {
    slots: Box<[UnsafeCell<T>]>,
    mask: usize,
    /// Next slot the consumer reads; written only by the consumer.
    head: Padded<AtomicUsize>,
    /// Next slot the producer writes; written only by the producer.
    tail: Padded<AtomicUsize>,
}

// SAFETY: a slot is accessed by at most one side at a time: the producer only touches slots in
// [tail, head + cap) and the consumer only those in [head, tail), and the Release/Acquire pairs
// on `head` and `tail` hand each slot over with its contents visible. T moves between threads,
// hence `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above; the shared state owns only `T` values and atomics.
unsafe impl<T: Send> Send for Shared<T> {}

/// The writing half of a ring.
pub struct Producer<T> {
    ring: Arc<Shared<T>>,
    tail: usize,
    head_cache: usize,
}

/// The reading half of a ring.
pub struct Consumer<T> {
    ring: Arc<Shared<T>>,
    head: usize,
    tail_cache: usize,
}

/// A ring of `capacity` slots (rounded up to a power of two, at least 2), each initialised by
/// `init`.
pub fn channel<T: Send>(
    capacity: usize,
    mut init: impl FnMut() -> T,
) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(2).next_power_of_two();
    let slots = (0..cap).map(|_| UnsafeCell::new(init())).collect();
    let ring = Arc::new(Shared {
        slots,
        mask: cap - 1,
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
    });
    (
        Producer {
            ring: ring.clone(),
            tail: 0,
            head_cache: 0,
        },
        Consumer {
            ring,
            head: 0,
            tail_cache: 0,
        },
    )
}

impl<T: Send> Producer<T> {
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }

    /// Items in the ring right now (fresh read of both indices).
    pub fn len(&self) -> usize {
        self.tail
            .wrapping_sub(self.ring.head.0.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots free right now (may grow as the consumer reads).
    pub fn free_slots(&mut self) -> usize {
        let cap = self.capacity();
        if self.tail.wrapping_sub(self.head_cache) == cap {
            self.head_cache = self.ring.head.0.load(Ordering::Acquire);
        }
        cap - self.tail.wrapping_sub(self.head_cache)
    }

    /// Fills the next free slot through `fill` and publishes it. Returns `false`, without
    /// calling `fill`, when the ring is full.
    #[inline]
    pub fn try_write(&mut self, fill: impl FnOnce(&mut T)) -> bool {
        let wrote = self.write_unpublished(fill);
        if wrote {
            self.publish();
        }
        wrote
    }

    /// Makes every slot written so far visible to the consumer: one store for a whole batch
    /// of [`Producer::write_unpublished`] calls.
    #[inline]
    pub fn publish(&mut self) {
        self.ring.tail.0.store(self.tail, Ordering::Release);
    }

    /// Fills the next free slot through `fill` without publishing it: the consumer sees it
    /// after the next [`Producer::publish`]. Returns `false`, without calling `fill`, when
    /// the ring is full.
    #[inline]
    pub fn write_unpublished(&mut self, fill: impl FnOnce(&mut T)) -> bool {
        if self.free_slots() == 0 {
            return false;
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: `tail - head < cap`, so the consumer has finished with this slot (its Release
        // store of `head` past it was observed by our Acquire load) and will not read it until
        // we publish `tail + 1` below.
        slot.with_mut(|p| fill(unsafe { &mut *p }));
        self.tail = self.tail.wrapping_add(1);
        true
    }
}

impl<T: Send> Consumer<T> {
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }

    /// Items in the ring right now (fresh read of both indices).
    pub fn len(&self) -> usize {
        self.ring
            .tail
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items ready to read right now.
    pub fn ready(&mut self) -> usize {
        if self.tail_cache == self.head {
            self.tail_cache = self.ring.tail.0.load(Ordering::Acquire);
        }
        self.tail_cache.wrapping_sub(self.head)
    }

    /// Looks at the oldest item without consuming it.
    #[inline]
    pub fn peek<R>(&mut self, read: impl FnOnce(&T) -> R) -> Option<R> {
        if self.ready() == 0 {
            return None;
        }
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: `head < tail`: the producer published this slot (Release on `tail`, observed
        // by our Acquire) and will not write it again until we move `head` past it.
        Some(slot.with(|p| read(unsafe { &*p })))
    }

    /// Reads the oldest item in place and consumes it.
    #[inline]
    pub fn try_read<R>(&mut self, read: impl FnOnce(&mut T) -> R) -> Option<R> {
        let r = self.read_unreleased(read);
        if r.is_some() {
            self.release();
        }
        r
    }

    /// Gives the slots read so far back to the producer: one store for a whole batch of
    /// [`Consumer::read_unreleased`] calls.
    #[inline]
    pub fn release(&mut self) {
        self.ring.head.0.store(self.head, Ordering::Release);
    }

    /// Reads the oldest item in place and consumes it without giving its slot back: the
    /// producer may reuse it after the next [`Consumer::release`].
    #[inline]
    pub fn read_unreleased<R>(&mut self, read: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.ready() == 0 {
            return None;
        }
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: as in `peek`; the mutable borrow lets the reader take values out of the slot
        // (e.g. `mem::take`), which the producer overwrites anyway.
        let r = slot.with_mut(|p| read(unsafe { &mut *p }));
        self.head = self.head.wrapping_add(1);
        Some(r)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    #[test]
    fn unpublished_writes_and_unreleased_reads_wait_for_their_batch_store() {
        let (mut p, mut c) = super::channel(4, || 0u32);
        assert!(p.write_unpublished(|v| *v = 1));
        assert!(p.write_unpublished(|v| *v = 2));
        assert_eq!(c.ready(), 0, "nothing visible before publish");
        p.publish();
        assert_eq!(c.read_unreleased(|v| *v), Some(1));
        assert_eq!(c.read_unreleased(|v| *v), Some(2));
        assert_eq!(c.read_unreleased(|v| *v), None);
        // The producer filled the other two slots; the read two are not back yet.
        assert!(p.write_unpublished(|v| *v = 3));
        assert!(p.write_unpublished(|v| *v = 4));
        assert!(
            !p.write_unpublished(|v| *v = 5),
            "full until the consumer releases"
        );
        c.release();
        assert!(p.write_unpublished(|v| *v = 5));
        p.publish();
        let got: Vec<u32> = std::iter::from_fn(|| c.try_read(|v| *v)).collect();
        assert_eq!(got, [3, 4, 5]);
    }

    use super::*;

    #[test]
    fn fifo_and_full() {
        let (mut p, mut c) = channel(4, || 0u32);
        for i in 0..4 {
            assert!(p.try_write(|s| *s = i));
        }
        assert!(!p.try_write(|_| unreachable!("full ring must not call fill")));
        assert_eq!(c.try_read(|s| *s), Some(0));
        assert!(p.try_write(|s| *s = 4));
        let got: Vec<u32> = std::iter::from_fn(|| c.try_read(|s| *s)).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(c.try_read(|s| *s), None);
    }

    #[test]
    fn capacity_rounds_up() {
        let (p, _c) = channel(5, || ());
        assert_eq!(p.capacity(), 8);
    }

    #[test]
    fn threads_exchange_exact_sequence() {
        const N: u64 = 200_000;
        let (mut p, mut c) = channel(64, || 0u64);
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                if p.try_write(|s| *s = i) {
                    i += 1;
                }
            }
        });
        let mut expect = 0;
        while expect < N {
            if let Some(v) = c.try_read(|s| *s) {
                assert_eq!(v, expect);
                expect += 1;
            }
        }
        t.join().unwrap();
    }
}
