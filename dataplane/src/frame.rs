//! Frames and the buffer pool they live in.
//!
//! A [`Frame`] is a descriptor — an address and a length — into one contiguous region owned by
//! a [`BufferPool`], the same shape an AF_XDP UMEM has. Frames are move-only: whoever holds a
//! `Frame` value owns that buffer until it hands it to a port, a ring, or back to the pool, so a
//! buffer cannot be in two places at once. The pool never allocates after construction.

use crate::sys::Mmap;
use thiserror::Error;

/// A buffer descriptor: `len` bytes starting at `addr` inside a [`BufferPool`]'s region.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a frame that is dropped on the floor leaks its buffer; give it back to the pool"]
pub struct Frame {
    addr: u64,
    len: u32,
}

impl Frame {
    /// Placeholder used to fill unused batch slots. It owns no buffer; the pool refuses it.
    pub(crate) const EMPTY: Frame = Frame {
        addr: u64::MAX,
        len: 0,
    };

    /// Offset of the buffer inside the pool's region.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Number of valid bytes in the buffer.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Builds a descriptor from raw parts. Only ports that receive descriptors from the kernel
    /// (AF_XDP) need this; they vouch that `addr` is a frame of the pool they hand it to and
    /// that the kernel has given it back. Crate-private: a frame forged from outside could name
    /// a buffer the kernel is still writing, and reading it through the pool would race.
    ///
    /// ```compile_fail
    /// // Outside the crate no frame can be forged.
    /// let f = linerate_dataplane::frame::Frame::from_raw(0, 64);
    /// ```
    pub(crate) fn from_raw(addr: u64, len: u32) -> Frame {
        Frame { addr, len }
    }

    /// Gives up the descriptor's raw parts, e.g. to write it into a kernel ring.
    pub fn into_raw(self) -> (u64, u32) {
        (self.addr, self.len)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("buffer pool: frame size {frame_size} must be a power of two between 64 and 65536")]
    FrameSize { frame_size: usize },
    #[error("buffer pool: frame count {frame_count} must be between 1 and {max}")]
    FrameCount { frame_count: usize, max: usize },
    #[error("buffer pool: mapping {bytes} bytes failed: {reason}")]
    Map { bytes: usize, reason: String },
}

/// A region of `frame_count` buffers of `frame_size` bytes each, with a LIFO free list (the
/// most recently freed buffer is the one still warm in cache).
///
/// The region is an anonymous mapping ([`Mmap`]), so any pool can be registered as an AF_XDP
/// UMEM. A frame's address may point past the start of its buffer (AF_XDP delivers received
/// frames behind 256 bytes of headroom); freeing returns the whole buffer.
pub struct BufferPool {
    region: Mmap,
    frame_size: usize,
    shift: u32,
    frames: usize,
    free: Vec<u64>,
}

impl BufferPool {
    /// Largest pool we build: 4 Mi frames (8 GiB of 2 KiB frames) is past anything sensible.
    pub const MAX_FRAMES: usize = 1 << 22;

    pub fn new(frame_count: usize, frame_size: usize) -> Result<BufferPool, PoolError> {
        if !frame_size.is_power_of_two() || !(64..=65536).contains(&frame_size) {
            return Err(PoolError::FrameSize { frame_size });
        }
        if frame_count == 0 || frame_count > Self::MAX_FRAMES {
            return Err(PoolError::FrameCount {
                frame_count,
                max: Self::MAX_FRAMES,
            });
        }
        let region =
            Mmap::anonymous(frame_count * frame_size).map_err(|source| PoolError::Map {
                bytes: frame_count * frame_size,
                reason: source.to_string(),
            })?;
        // Pop order is ascending so that fresh pools hand out low addresses first.
        let free = (0..frame_count as u64)
            .rev()
            .map(|i| i * frame_size as u64)
            .collect();
        Ok(BufferPool {
            region,
            frame_size,
            shift: frame_size.trailing_zeros(),
            frames: frame_count,
            free,
        })
    }

    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Total number of frames, free or not.
    pub fn capacity(&self) -> usize {
        self.frames
    }

    /// The region, for registering it as an AF_XDP UMEM.
    ///
    /// # Errors
    /// When the pool's frame size is not a UMEM chunk size (2048 or 4096).
    pub fn umem_area(&self) -> Result<crate::xsk::UmemArea, crate::xsk::XskError> {
        crate::xsk::UmemArea::new(&self.region, self.frame_size as u32)
    }

    /// The buffer (chunk) a frame address lies in.
    #[inline]
    fn chunk(&self, addr: u64) -> u64 {
        addr & !(self.frame_size as u64 - 1)
    }

    /// Number of frames currently in the free list.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes a free buffer, with length zero.
    #[inline]
    pub fn alloc(&mut self) -> Option<Frame> {
        self.free.pop().map(|addr| Frame { addr, len: 0 })
    }

    /// Appends up to `n` free buffers (length zero) to `batch`, as many as it has room for,
    /// in the order [`BufferPool::alloc`] would hand them out; returns how many.
    #[inline]
    pub fn alloc_batch(&mut self, batch: &mut crate::batch::Batch, n: usize) -> usize {
        let n = n.min(self.free.len());
        let taken = batch.push_fresh_rev(&self.free[self.free.len() - n..]);
        // The addresses handed out are the last `taken`; the rest stay free.
        self.free.truncate(self.free.len() - taken);
        taken
    }

    /// Returns a buffer to the free list.
    ///
    /// # Panics
    /// In debug builds, if `frame` is not a frame of this pool: that is a bug in a port, never
    /// a consequence of input.
    #[inline]
    pub fn free(&mut self, frame: Frame) {
        debug_assert!(
            self.owns(&frame),
            "frame {:#x} is not from this pool",
            frame.addr
        );
        debug_assert!(self.free.len() < self.capacity(), "pool over-freed");
        self.free.push(self.chunk(frame.addr));
    }

    /// Returns every frame of `batch` to the free list, front to back, and empties it: one
    /// reservation and a straight copy of addresses instead of a push per frame.
    #[inline]
    pub fn free_batch(&mut self, batch: &mut crate::batch::Batch) {
        let frames = batch.as_slice();
        debug_assert!(
            frames.iter().all(|f| self.owns(f)),
            "a frame is not from this pool"
        );
        debug_assert!(
            self.free.len() + frames.len() <= self.capacity(),
            "pool over-freed"
        );
        let mask = !(self.frame_size as u64 - 1);
        self.free.extend(frames.iter().map(|f| f.addr & mask));
        batch.forget_freed();
    }

    /// True if `frame` lies inside one buffer of this pool.
    pub fn owns(&self, frame: &Frame) -> bool {
        let off = frame.addr - self.chunk(frame.addr);
        (frame.addr >> self.shift) < self.frames as u64
            && off + frame.len as u64 <= self.frame_size as u64
    }

    /// Room in the frame's buffer from its address to the end of the buffer.
    #[inline]
    fn room(&self, frame: &Frame) -> usize {
        self.frame_size - (frame.addr - self.chunk(frame.addr)) as usize
    }

    /// The frame's whole buffer from its address on, writable: to receive into it, or to
    /// write something longer than the frame (set the length after with [`BufferPool::set_len`]).
    #[inline]
    pub fn room_mut(&mut self, frame: &Frame) -> &mut [u8] {
        let n = self.room(frame);
        self.region.slice_mut(frame.addr as usize, n)
    }

    /// The frame's valid bytes.
    #[inline]
    pub fn data(&self, frame: &Frame) -> &[u8] {
        self.region.slice(frame.addr as usize, frame.len as usize)
    }

    /// The frame's valid bytes, writable.
    #[inline]
    pub fn data_mut(&mut self, frame: &Frame) -> &mut [u8] {
        self.region
            .slice_mut(frame.addr as usize, frame.len as usize)
    }

    /// Copies `bytes` into the frame's buffer and sets its length. Bytes beyond the buffer are
    /// cut off; the return value says how many were kept.
    #[inline]
    pub fn fill(&mut self, frame: &mut Frame, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room(frame));
        self.region
            .slice_mut(frame.addr as usize, n)
            .copy_from_slice(&bytes[..n]);
        frame.len = n as u32;
        n
    }

    /// Copies a 64-byte block into the start of the frame's buffer and sets its length to
    /// `len` (at most 64). A constant-size copy compiles to a few vector moves instead of a
    /// `memcpy` call — what a generator writing minimum-size frames needs.
    #[inline]
    pub fn fill_block64(&mut self, frame: &mut Frame, block: &[u8; 64], len: usize) {
        debug_assert!(
            self.room(frame) >= 64,
            "fill_block64 needs 64 bytes of room"
        );
        let dst: &mut [u8; 64] = self
            .region
            .slice_mut(frame.addr as usize, 64)
            .try_into()
            .expect("a 64-byte slice");
        *dst = *block;
        frame.len = len.min(64) as u32;
    }

    /// Sets the frame's length, clamped to the room in its buffer.
    #[inline]
    pub fn set_len(&self, frame: &mut Frame, len: usize) {
        frame.len = len.min(self.room(frame)) as u32;
    }

    /// Copies `src`'s bytes into a newly allocated frame (used for broadcast and handoff).
    #[inline]
    pub fn clone_frame(&mut self, src: &Frame) -> Option<Frame> {
        let mut dst = self.alloc()?;
        let (s, d, n) = (src.addr as usize, dst.addr as usize, src.len as usize);
        self.region.copy_within(s, d, n);
        dst.len = src.len;
        Some(dst)
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("frame_size", &self.frame_size)
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        assert_eq!(
            BufferPool::new(8, 100).unwrap_err(),
            PoolError::FrameSize { frame_size: 100 }
        );
        assert!(BufferPool::new(0, 2048).is_err());
    }

    #[test]
    fn alloc_fill_free_round_trip() {
        let mut pool = BufferPool::new(4, 2048).unwrap();
        let mut f = pool.alloc().unwrap();
        assert_eq!(f.addr(), 0);
        assert_eq!(pool.fill(&mut f, &[1, 2, 3]), 3);
        assert_eq!(pool.data(&f), &[1, 2, 3]);
        let g = pool.clone_frame(&f).unwrap();
        assert_eq!(pool.data(&g), &[1, 2, 3]);
        assert_ne!(f.addr(), g.addr());
        pool.free(f);
        pool.free(g);
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn alloc_batch_hands_out_what_alloc_would() {
        let mut pool = BufferPool::new(6, 64).unwrap();
        let mut one_by_one = BufferPool::new(6, 64).unwrap();
        let mut b = crate::batch::Batch::new(4);
        assert_eq!(
            pool.alloc_batch(&mut b, 9),
            4,
            "no more than the batch holds"
        );
        let want: Vec<u64> = (0..4).map(|_| one_by_one.alloc().unwrap().addr()).collect();
        assert_eq!(
            b.as_slice().iter().map(Frame::addr).collect::<Vec<_>>(),
            want
        );
        assert_eq!(pool.available(), 2);
        pool.free_batch(&mut b);
        assert_eq!(pool.available(), 6);
    }

    #[test]
    fn frames_behind_headroom_free_their_whole_buffer() {
        let mut pool = BufferPool::new(2, 2048).unwrap();
        let f = pool.alloc().unwrap();
        let base = f.addr();
        let _ = f.into_raw();
        // As AF_XDP delivers it: 256 bytes into the buffer.
        let mut g = Frame::from_raw(base + 256, 100);
        assert!(pool.owns(&g));
        assert!(
            !pool.owns(&Frame::from_raw(base + 2000, 100)),
            "runs past its buffer"
        );
        assert_eq!(
            pool.fill(&mut g, &[7u8; 4000]),
            2048 - 256,
            "room ends at the buffer's end"
        );
        pool.free(g);
        assert_eq!(pool.available(), 2);
        assert_eq!(
            pool.alloc().unwrap().into_raw().0,
            base,
            "the whole buffer came back"
        );
    }

    #[test]
    fn exhaustion_is_none_not_panic() {
        let mut pool = BufferPool::new(2, 64).unwrap();
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        pool.free(a);
        pool.free(b);
    }

    #[test]
    fn fill_truncates_to_frame_size() {
        let mut pool = BufferPool::new(1, 64).unwrap();
        let mut f = pool.alloc().unwrap();
        assert_eq!(pool.fill(&mut f, &[7u8; 100]), 64);
        assert_eq!(f.len(), 64);
        pool.free(f);
    }
}
