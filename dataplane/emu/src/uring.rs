//! A worker's io_uring for TAP devices, as a safe type that owns what it lends the kernel:
//! a frame given to [`TapIo::read`] or [`TapIo::write`] stays here until its completion is
//! reaped, and comes back with it. Also a read of the worker's wake-up eventfd, and waiting
//! with a timeout (no timer request to cancel), and polls of AF_XDP sockets. The engine's only `unsafe` is here.
#![allow(unsafe_code)]

use io_uring::{IoUring, opcode, squeue, types};
use linerate_dataplane::frame::{BufferPool, Frame};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

const TAG_POLL: u64 = 0;
const TAG_READ: u64 = 1 << 62;
const TAG_WRITE: u64 = 2 << 62;
const TAG_WAKE: u64 = 3 << 62;
const TAG_MASK: u64 = 3 << 62;

/// A finished request.
pub enum Done {
    /// Read slot `slot` finished: the frame (its length set when `res > 0`) and the result.
    Read { slot: usize, frame: Frame, res: i32 },
    /// A write finished: the frame to free.
    Write { frame: Frame },
    /// The wake-up eventfd was written (its read must be posted again).
    Wake,
    /// Poll slot `slot`'s descriptor became readable (one-shot: post it again to hear more).
    Poll { slot: usize },
}

pub struct TapIo {
    ring: IoUring,
    /// Frames lent for reading, by read slot.
    reads: Vec<Option<Frame>>,
    /// Frames lent for writing, by write slot, and the free slots.
    writes: Vec<Option<Frame>>,
    free_writes: Vec<u32>,
    /// Where the eventfd's counter is read to; boxed so it never moves.
    wake_counter: Box<u64>,
    completions: Vec<(u64, i32)>,
}

impl TapIo {
    /// A ring of `entries` submissions (four times as many completions) with `read_slots`
    /// read slots.
    pub fn new(entries: u32, read_slots: usize) -> io::Result<TapIo> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries)?;
        Ok(TapIo {
            ring,
            reads: (0..read_slots).map(|_| None).collect(),
            writes: Vec::new(),
            free_writes: Vec::new(),
            wake_counter: Box::new(0),
            completions: Vec::with_capacity(entries as usize * 4),
        })
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry pushed points into a frame or the counter held by `self` until
        // its completion is reaped (the callers below keep them); pushing copies the entry.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above; the queue was just handed to the kernel.
            unsafe { self.ring.submission().push(&e) }
                .map_err(|_| io::Error::other("io_uring submission queue still full"))?;
        }
        Ok(())
    }

    /// Whether read slot `slot` has a read under way.
    pub fn reading(&self, slot: usize) -> bool {
        self.reads[slot].is_some()
    }

    /// Reads one frame from TAP `fd` into `frame` (whole buffer) in read slot `slot`.
    pub fn read(
        &mut self,
        slot: usize,
        fd: RawFd,
        frame: Frame,
        pool: &mut BufferPool,
    ) -> io::Result<()> {
        let buf = pool.room_mut(&frame);
        let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
            .build()
            .user_data(TAG_READ | slot as u64);
        match self.push(e) {
            Ok(()) => {
                self.reads[slot] = Some(frame);
                Ok(())
            }
            Err(err) => {
                pool.free(frame);
                Err(err)
            }
        }
    }

    /// Writes `frame` to TAP `fd`; on error the frame is freed.
    pub fn write(&mut self, fd: RawFd, frame: Frame, pool: &mut BufferPool) -> io::Result<()> {
        let slot = match self.free_writes.pop() {
            Some(s) => s as usize,
            None => {
                self.writes.push(None);
                self.writes.len() - 1
            }
        };
        let buf = pool.data(&frame);
        let e = opcode::Write::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
            .build()
            .user_data(TAG_WRITE | slot as u64);
        match self.push(e) {
            Ok(()) => {
                self.writes[slot] = Some(frame);
                Ok(())
            }
            Err(err) => {
                self.free_writes.push(slot as u32);
                pool.free(frame);
                Err(err)
            }
        }
    }

    /// Waits for `fd` to be readable: a [`Done::Poll`] for `slot` comes when it is (at once if
    /// it already is).
    pub fn poll(&mut self, slot: usize, fd: RawFd) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(TAG_POLL | slot as u64);
        self.push(e)
    }

    /// Reads eventfd `fd`: a [`Done::Wake`] comes when someone writes it.
    pub fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        let e = opcode::Read::new(
            types::Fd(fd),
            (&mut *self.wake_counter as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(TAG_WAKE);
        self.push(e)
    }

    /// Submits what is queued; waits for a completion when `wait` says so, at most `timeout`
    /// (`None`: until one comes).
    pub fn submit(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        let r = if !wait {
            self.ring.submit()
        } else if let Some(t) = timeout {
            let ts = types::Timespec::new()
                .sec(t.as_secs())
                .nsec(t.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            self.ring.submit_and_wait(1)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every finished request, frames handed back (`pool` sets a read frame's length).
    pub fn reap(&mut self, pool: &mut BufferPool, out: &mut Vec<Done>) {
        self.completions.clear();
        self.completions
            .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &self.completions {
            let slot = (ud & !TAG_MASK) as usize;
            match ud & TAG_MASK {
                TAG_READ => {
                    if let Some(mut frame) = self.reads.get_mut(slot).and_then(Option::take) {
                        if res > 0 {
                            pool.set_len(&mut frame, res as usize);
                        }
                        out.push(Done::Read { slot, frame, res });
                    }
                }
                TAG_WRITE => {
                    if let Some(frame) = self.writes.get_mut(slot).and_then(Option::take) {
                        self.free_writes.push(slot as u32);
                        out.push(Done::Write { frame });
                    }
                }
                TAG_WAKE => out.push(Done::Wake),
                _ => out.push(Done::Poll { slot }),
            }
        }
    }
}
