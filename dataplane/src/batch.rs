//! Fixed-capacity batches of frames.
//!
//! Workers move frames in batches (default 64, at most [`MAX_BATCH`]) so that per-call costs —
//! ring index updates, system calls, dispatch through `dyn Port` — are paid once per batch.
//! A batch is an inline array: creating, filling and draining one never allocates.

use crate::frame::Frame;

/// Largest batch a port exchanges with a worker.
pub const MAX_BATCH: usize = 256;
/// Batch size used when none is configured.
pub const DEFAULT_BATCH: usize = 64;

/// Up to `cap` frames, in order.
pub struct Batch {
    frames: [Frame; MAX_BATCH],
    len: usize,
    cap: usize,
}

impl Batch {
    /// A batch holding at most `cap` frames (clamped to `1..=MAX_BATCH`).
    pub fn new(cap: usize) -> Batch {
        Batch {
            frames: [const { Frame::EMPTY }; MAX_BATCH],
            len: 0,
            cap: cap.clamp(1, MAX_BATCH),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Changes the capacity (clamped to `len()..=MAX_BATCH`, and at least 1).
    pub fn set_capacity(&mut self, cap: usize) {
        self.cap = cap.clamp(self.len.max(1), MAX_BATCH);
    }

    /// Free slots left.
    pub fn room(&self) -> usize {
        self.cap - self.len
    }

    pub fn is_full(&self) -> bool {
        self.len == self.cap
    }

    /// Appends a frame; a full batch hands it back.
    #[inline]
    pub fn push(&mut self, frame: Frame) -> Result<(), Frame> {
        if self.len == self.cap {
            return Err(frame);
        }
        self.frames[self.len] = frame;
        self.len += 1;
        Ok(())
    }

    /// Removes the last frame.
    #[inline]
    pub fn pop(&mut self) -> Option<Frame> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(std::mem::replace(&mut self.frames[self.len], Frame::EMPTY))
    }

    /// Takes every frame out, front to back, leaving the batch empty.
    #[inline]
    pub fn drain(&mut self) -> Drain<'_> {
        let len = self.len;
        self.len = 0;
        Drain {
            frames: &mut self.frames[..len],
            next: 0,
        }
    }

    /// Removes the first `n` frames, shifting the rest to the front (used when a port accepted
    /// only part of a batch). The removed frames are returned front to back.
    pub fn drain_front(&mut self, n: usize) -> Drain<'_> {
        let n = n.min(self.len);
        // Rotate the taken frames to the tail so the remainder keeps its order at the front.
        self.frames[..self.len].rotate_left(n);
        let old = self.len;
        self.len -= n;
        Drain {
            frames: &mut self.frames[old - n..old],
            next: 0,
        }
    }

    pub fn as_slice(&self) -> &[Frame] {
        &self.frames[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [Frame] {
        &mut self.frames[..self.len]
    }

    /// Takes the frame at `i`, leaving a placeholder; the fabric takes frames out of a received
    /// batch in destination order, then calls [`Batch::forget_taken`].
    #[inline]
    pub(crate) fn take(&mut self, i: usize) -> Frame {
        std::mem::replace(&mut self.frames[..self.len][i], Frame::EMPTY)
    }

    /// Empties a batch whose frames were all moved out with [`Batch::take`].
    #[inline]
    pub(crate) fn forget_taken(&mut self) {
        debug_assert!(
            self.as_slice()
                .iter()
                .all(|f| f.addr() == Frame::EMPTY.addr()),
            "forget_taken on a batch that still owns frames"
        );
        self.len = 0;
    }

    /// Empties a batch whose every frame the pool has just taken back by address
    /// ([`crate::frame::BufferPool::free_batch`]). The descriptors stay behind past `len`,
    /// where nothing reads them (every accessor stops at `len`, `push` overwrites), so no
    /// placeholder needs writing.
    #[inline]
    pub(crate) fn forget_freed(&mut self) {
        self.len = 0;
    }

    /// Appends a fresh, empty frame for each of `addrs`, last address first (the order a LIFO
    /// pool hands them out), as many as fit; returns how many. For the pool only: the caller
    /// must own those buffers and give up the first `returned` addresses from the end.
    #[inline]
    pub(crate) fn push_fresh_rev(&mut self, addrs: &[u64]) -> usize {
        let to = &mut self.frames[self.len..self.cap];
        let n = to.len().min(addrs.len());
        for (slot, &addr) in to.iter_mut().zip(addrs.iter().rev()) {
            *slot = Frame::from_raw(addr, 0);
        }
        self.len += n;
        n
    }

    /// Moves the frames at `slots` of `src` (each taken with [`Batch::take`]) to the end of
    /// this batch, in order; the frames that do not fit go back to `pool`.
    #[inline]
    pub(crate) fn take_from(
        &mut self,
        src: &mut Batch,
        slots: impl Iterator<Item = usize>,
        pool: &mut crate::frame::BufferPool,
    ) {
        // Local slices and length: the placeholder stores cannot make the compiler reload
        // either batch's bounds per frame.
        let from = &mut src.frames[..src.len];
        let to = &mut self.frames[..self.cap];
        let mut len = self.len;
        for s in slots {
            let f = std::mem::replace(&mut from[s], Frame::EMPTY);
            match to.get_mut(len) {
                Some(slot) => {
                    *slot = f;
                    len += 1;
                }
                None => pool.free(f),
            }
        }
        self.len = len;
    }

    /// Swaps two frames in place (used to reorder in fault injection).
    pub fn swap(&mut self, a: usize, b: usize) {
        self.as_mut_slice().swap(a, b);
    }

    /// Replaces the frame at `i`, returning the previous one.
    pub fn replace(&mut self, i: usize, frame: Frame) -> Frame {
        std::mem::replace(&mut self.as_mut_slice()[i], frame)
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

/// Iterator returned by [`Batch::drain`]; frames not consumed are handed back to nobody, so
/// callers must exhaust it (debug builds check).
pub struct Drain<'a> {
    frames: &'a mut [Frame],
    next: usize,
}

impl Iterator for Drain<'_> {
    type Item = Frame;

    #[inline]
    fn next(&mut self) -> Option<Frame> {
        let slot = self.frames.get_mut(self.next)?;
        self.next += 1;
        Some(std::mem::replace(slot, Frame::EMPTY))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.frames.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Drain<'_> {}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        debug_assert!(
            self.next == self.frames.len(),
            "batch drain dropped with {} frames unconsumed",
            self.frames.len() - self.next
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::BufferPool;

    #[test]
    fn push_until_full_hands_back() {
        let mut pool = BufferPool::new(8, 64).unwrap();
        let mut b = Batch::new(2);
        b.push(pool.alloc().unwrap()).unwrap();
        b.push(pool.alloc().unwrap()).unwrap();
        let extra = b.push(pool.alloc().unwrap()).unwrap_err();
        pool.free(extra);
        for f in b.drain() {
            pool.free(f);
        }
        assert_eq!(pool.available(), 8);
        assert!(b.is_empty());
    }

    #[test]
    fn drain_front_keeps_order_of_rest() {
        let mut pool = BufferPool::new(8, 64).unwrap();
        let mut b = Batch::new(8);
        for _ in 0..5 {
            b.push(pool.alloc().unwrap()).unwrap();
        }
        let addrs: Vec<u64> = b.as_slice().iter().map(Frame::addr).collect();
        let taken: Vec<Frame> = b.drain_front(2).collect();
        assert_eq!(
            taken.iter().map(Frame::addr).collect::<Vec<_>>(),
            addrs[..2]
        );
        assert_eq!(
            b.as_slice().iter().map(Frame::addr).collect::<Vec<_>>(),
            addrs[2..]
        );
        for f in taken.into_iter().chain(b.drain()) {
            pool.free(f);
        }
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn take_from_moves_in_order_and_frees_what_does_not_fit() {
        let mut pool = BufferPool::new(8, 64).unwrap();
        let mut src = Batch::new(8);
        for _ in 0..5 {
            src.push(pool.alloc().unwrap()).unwrap();
        }
        let addrs: Vec<u64> = src.as_slice().iter().map(Frame::addr).collect();
        let mut dst = Batch::new(2);
        dst.take_from(&mut src, [4, 1, 3].into_iter(), &mut pool);
        assert_eq!(
            dst.as_slice().iter().map(Frame::addr).collect::<Vec<_>>(),
            [addrs[4], addrs[1]]
        );
        assert_eq!(pool.available(), 4, "the third did not fit and went home");
        dst.take_from(&mut src, [0, 2].into_iter(), &mut pool);
        src.forget_taken();
        pool.free_batch(&mut dst);
        assert!(dst.is_empty());
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn capacity_is_clamped() {
        assert_eq!(Batch::new(0).capacity(), 1);
        assert_eq!(Batch::new(10_000).capacity(), MAX_BATCH);
    }
}
