//! Max mode: per direction, a pooled pipe and poll-then-splice — `PollAdd` on the source, then
//! `splice(source -> pipe)` and `splice(pipe -> destination)` with `SPLICE_F_NONBLOCK`, each
//! its own request (never a linked pair: a short splice would cancel the link), and a
//! `PollAdd(POLLOUT)` when the destination is full. The payload never enters user space.
//! `SpliceVia::Syscall` runs the same two splices as splice(2) calls from the worker when the
//! poll completes, instead of as ring requests.
//!
//! One direction ending shuts down the write side of the other socket (half-close); an error
//! (reset) closes both with `SO_LINGER` 0 so the peer sees a reset too.

use super::conn::Conn;
use super::conn::{OP_POLL_IN, OP_POLL_OUT, OP_SPLICE_IN, OP_SPLICE_OUT};
use super::worker::Worker;
use super::{RelayMode, SpliceVia, sys};
use io_uring::{opcode, types};
use nix::sys::socket::Shutdown;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const PIPE_SIZE: usize = 1 << 18;
const SPLICE_CHUNK: u32 = 1 << 18;

pub(super) fn new_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::pipe(PIPE_SIZE)
}

/// Max mode: pipes of closed connections, empty, for the next connections on this worker.
/// Pipes nobody took during a whole period are closed at its end, so a burst's pipes do not
/// stay open until the relay exits (each pipe is two descriptors and up to `PIPE_SIZE` of
/// kernel memory while it holds data).
pub(super) struct PipePool {
    pipes: Vec<(OwnedFd, OwnedFd)>,
    /// The fewest pipes the pool held since the period began: that many went unused.
    low: usize,
    period_start: Instant,
}

impl PipePool {
    /// At most this many pipes wait in the pool.
    const CAP: usize = 1024;
    /// Pipes unused for this long are closed.
    pub(super) const IDLE: Duration = Duration::from_secs(5);

    pub(super) fn new(now: Instant) -> PipePool {
        PipePool {
            pipes: Vec::new(),
            low: 0,
            period_start: now,
        }
    }

    /// A pipe from the pool, or a new one.
    pub(super) fn take(&mut self) -> io::Result<(OwnedFd, OwnedFd)> {
        let p = self.pipes.pop();
        self.low = self.low.min(self.pipes.len());
        p.map_or_else(new_pipe, Ok)
    }

    /// Gives a connection's pipe back. It is kept only when it is empty (bytes left in it
    /// would go to the next connection) and the pool has room; otherwise it is closed.
    pub(super) fn give(&mut self, p: (OwnedFd, OwnedFd)) {
        if self.pipes.len() < Self::CAP && sys::pipe_is_empty(p.0.as_fd()) {
            self.pipes.push(p);
        }
    }

    /// At the end of each period, closes the pipes that stayed unused through it; returns how
    /// many it closed.
    pub(super) fn trim(&mut self, now: Instant) -> usize {
        if now.duration_since(self.period_start) < Self::IDLE {
            return 0;
        }
        let unused = self.low.min(self.pipes.len());
        self.pipes.truncate(self.pipes.len() - unused);
        self.low = self.pipes.len();
        self.period_start = now;
        unused
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pipes.len()
    }
}

impl Worker {
    /// Direction `d`'s (source, destination).
    pub(super) fn fds(&mut self, slot: usize, d: usize) -> (RawFd, RawFd) {
        let c = self.conn(slot);
        let client = c.client.as_raw_fd();
        let remote = c.remote.as_ref().map_or(-1, |r| r.as_raw_fd());
        if d == 0 {
            (client, remote)
        } else {
            (remote, client)
        }
    }

    /// Waits for direction `d`'s source to be readable (max mode), or reads it (normal mode).
    pub(super) fn start_dir(&mut self, slot: usize, d: usize) {
        if self.conn(slot).dirs[d].done {
            return;
        }
        if self.shared.cfg.mode == RelayMode::Normal {
            return self.start_read(slot, d);
        }
        let (src, _) = self.fds(slot, d);
        let e = opcode::PollAdd::new(types::Fd(src), libc::POLLIN as u32).build();
        self.submit_op(slot, OP_POLL_IN + 8 * d as u64, e);
    }

    /// A reset (or any error) ends both directions; the peer must see a reset too.
    pub(super) fn dir_error(&mut self, slot: usize) {
        self.conn(slot).reset = true;
        self.close(slot, true);
    }

    /// Direction `d`'s source ended: pass the end on (half-close).
    pub(super) fn dir_eof(&mut self, slot: usize, d: usize) {
        let c = self.conn(slot);
        let dst = if d == 0 {
            c.remote.as_ref()
        } else {
            Some(&c.client)
        };
        if let Some(dst) = dst {
            sys::shutdown(dst.as_fd(), Shutdown::Write);
        }
        c.dirs[d].done = true;
        if c.dirs[0].done && c.dirs[1].done {
            self.close(slot, false);
        }
    }

    pub(super) fn on_poll_in(&mut self, slot: usize, d: usize, res: i32) {
        if res < 0 {
            return self.dir_error(slot);
        }
        if self.shared.cfg.splice == SpliceVia::Syscall {
            return self.splice_now(slot, d);
        }
        let (src, _) = self.fds(slot, d);
        let (_, w) = self.pipe_fds(slot, d);
        self.splice_op(slot, src, w, SPLICE_CHUNK, OP_SPLICE_IN + 8 * d as u64);
    }

    /// Direction `d`'s pipe: (read end, write end).
    fn pipe_fds(&mut self, slot: usize, d: usize) -> (RawFd, RawFd) {
        let p = self.conn(slot).dirs[d].pipe.as_ref().expect("pipe");
        (p.0.as_raw_fd(), p.1.as_raw_fd())
    }

    /// A non-blocking splice of up to `len` bytes from `from` to `to`, as ring request `op`.
    fn splice_op(&mut self, slot: usize, from: RawFd, to: RawFd, len: u32, op: u64) {
        let e = opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len)
            .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
            .build();
        self.submit_op(slot, op, e);
    }

    pub(super) fn on_splice_in(&mut self, slot: usize, d: usize, res: i32) {
        match res {
            0 => self.dir_eof(slot, d),
            r if r == -libc::EAGAIN => self.start_dir(slot, d),
            r if r < 0 => self.dir_error(slot),
            n => {
                self.conn(slot).dirs[d].in_pipe = n as usize;
                self.splice_out(slot, d);
            }
        }
    }

    fn splice_out(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        let (r, _) = self.pipe_fds(slot, d);
        let n = self.conn(slot).dirs[d].in_pipe as u32;
        self.splice_op(slot, r, dst, n, OP_SPLICE_OUT + 8 * d as u64);
    }

    pub(super) fn on_splice_out(&mut self, slot: usize, d: usize, res: i32) {
        match res {
            r if r == -libc::EAGAIN => self.wait_writable(slot, d),
            // Nothing moved out of a pipe that holds bytes: the destination is gone.
            r if r <= 0 => self.dir_error(slot),
            n => {
                self.moved(slot, d, n as u64);
                let c = self.conn(slot);
                c.dirs[d].in_pipe -= n as usize;
                if c.dirs[d].in_pipe > 0 {
                    self.splice_out(slot, d);
                } else {
                    self.start_dir(slot, d);
                }
            }
        }
    }

    /// Direction `d`'s destination is full: continue when it is writable again.
    pub(super) fn wait_writable(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        let e = opcode::PollAdd::new(types::Fd(dst), libc::POLLOUT as u32).build();
        self.submit_op(slot, OP_POLL_OUT + 8 * d as u64, e);
    }

    pub(super) fn on_poll_out(&mut self, slot: usize, d: usize, res: i32) {
        if res < 0 {
            return self.dir_error(slot);
        }
        match (self.shared.cfg.mode, self.shared.cfg.splice) {
            (RelayMode::Max, SpliceVia::Syscall) => self.splice_now(slot, d),
            (RelayMode::Max, SpliceVia::Uring) => self.splice_out(slot, d),
            (RelayMode::Normal, _) => self.write_out(slot, d),
        }
    }

    /// `SpliceVia::Syscall`: moves what is readable now with splice(2) calls, then waits.
    fn splice_now(&mut self, slot: usize, d: usize) {
        // A bounded number of rounds, so one busy connection cannot hold the worker; then the
        // ring says when to go on (at once, if the socket is still ready).
        for _ in 0..ROUNDS {
            match splice_step(self.conn(slot), d) {
                Step::Moved(n) => self.moved(slot, d, n as u64),
                Step::Eof => return self.dir_eof(slot, d),
                Step::SourceDry => return self.start_dir(slot, d),
                Step::DestinationFull => return self.wait_writable(slot, d),
                Step::Error => return self.dir_error(slot),
            }
        }
        if self.conn(slot).dirs[d].in_pipe > 0 {
            self.wait_writable(slot, d)
        } else {
            self.start_dir(slot, d)
        }
    }
}

/// splice(2) rounds per readiness event.
const ROUNDS: usize = 16;

enum Step {
    Moved(usize),
    Eof,
    SourceDry,
    DestinationFull,
    Error,
}

/// One round of direction `d` with splice(2): fill the pipe if it is empty, then empty it
/// into the destination as far as it takes.
fn splice_step(c: &mut Conn, d: usize) -> Step {
    let Some(remote) = c.remote.as_ref() else {
        return Step::Error;
    };
    let (src, dst) = if d == 0 {
        (c.client.as_fd(), remote.as_fd())
    } else {
        (remote.as_fd(), c.client.as_fd())
    };
    let dir = &mut c.dirs[d];
    let Some((r, w)) = dir.pipe.as_ref() else {
        return Step::Error;
    };
    if dir.in_pipe == 0 {
        match sys::splice_now(src, w.as_fd(), SPLICE_CHUNK as usize) {
            Ok(0) => return Step::Eof,
            Ok(n) => dir.in_pipe = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::SourceDry,
            Err(_) => return Step::Error,
        }
    }
    match sys::splice_now(r.as_fd(), dst, dir.in_pipe) {
        // Nothing moved out of a pipe that holds bytes: the destination is gone (and
        // without this, a loop that never ends).
        Ok(0) => Step::Error,
        Ok(n) => {
            dir.in_pipe -= n;
            Step::Moved(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::DestinationFull,
        Err(_) => Step::Error,
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn pipes_unused_for_a_whole_period_are_closed_and_full_ones_never_kept() {
        let t0 = Instant::now();
        let mut pool = PipePool::new(t0);
        // A burst: ten connections take pipes, then give them back.
        let taken: Vec<_> = (0..10).map(|_| pool.take().unwrap()).collect();
        for p in taken {
            pool.give(p);
        }
        assert_eq!(pool.len(), 10);
        // The first period saw the pool empty: nothing in it went unused all along.
        assert_eq!(pool.trim(t0 + PipePool::IDLE), 0);
        assert_eq!(pool.len(), 10);
        // Three taken and given back during the next one: seven were never touched.
        let again: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        for p in again {
            pool.give(p);
        }
        assert_eq!(
            pool.trim(t0 + PipePool::IDLE + PipePool::IDLE / 2),
            0,
            "mid-period"
        );
        assert_eq!(pool.trim(t0 + 2 * PipePool::IDLE), 7);
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.trim(t0 + 3 * PipePool::IDLE), 3);
        assert_eq!(pool.len(), 0);
        // A pipe that still holds bytes is closed, not kept.
        let p = pool.take().unwrap();
        nix::unistd::write(&p.1, b"left over").unwrap();
        pool.give(p);
        assert_eq!(pool.len(), 0);
    }
}
