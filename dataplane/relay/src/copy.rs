//! Normal mode: per direction, `ReadFixed`/`WriteFixed` through a registered buffer (a heap
//! buffer when the worker's are all in use), paced by the direction's own token bucket
//! (`--rate`, the worker's: no lock) and the user's shared one (`--user-rate`, locked only
//! when set). A read that puts a bucket in debt makes the next one wait (an io_uring
//! `Timeout`), so the average rate holds whatever the read sizes.

use super::conn::{OP_READ, OP_WAIT, OP_WRITE};
use super::worker::Worker;
use super::{bucket, now_ns};
use io_uring::{opcode, types};
use std::time::Duration;

/// Normal mode: bytes per registered buffer, one per direction.
pub(super) const BUF: usize = 64 * 1024;

impl Worker {
    /// Gives direction `d` its buffer and, with `--rate`, its bucket.
    pub(super) fn setup_copy(&mut self, slot: usize, d: usize) {
        let idx = self.free_bufs.pop();
        let rate = self.shared.cfg.rate;
        let dir = &mut self.conn(slot).dirs[d];
        dir.buf_index = idx;
        if idx.is_none() {
            dir.heap = vec![0; BUF];
        }
        dir.bucket = rate.map(bucket);
    }

    fn buf_ptr(&mut self, slot: usize, d: usize) -> (*mut u8, Option<u16>) {
        let idx = self.conn(slot).dirs[d].buf_index;
        match idx {
            Some(i) => (self.bufs[i as usize * BUF..].as_mut_ptr(), Some(i)),
            None => (self.conn(slot).dirs[d].heap.as_mut_ptr(), None),
        }
    }

    /// How long direction `d` must wait before its next read (its bucket and its user's).
    fn rate_wait(&mut self, slot: usize, d: usize) -> Duration {
        let c = self.conn(slot);
        let own = (c.dirs[d].bucket.as_mut()).map_or(Duration::ZERO, |b| b.debt_wait(now_ns()));
        let user = c.user_share.as_ref().map_or(Duration::ZERO, |u| u.wait());
        own.max(user)
    }

    /// Reads direction `d`'s source into its buffer, once the buckets allow.
    pub(super) fn start_read(&mut self, slot: usize, d: usize) {
        let (src, _) = self.fds(slot, d);
        let wait = self.rate_wait(slot, d);
        if wait > Duration::ZERO {
            let c = self.conn(slot);
            c.wait_ts[d] = types::Timespec::new()
                .sec(wait.as_secs())
                .nsec(wait.subsec_nanos());
            // Points into the boxed connection, alive until this request completes.
            let e = opcode::Timeout::new(&c.wait_ts[d]).build();
            self.submit_op(slot, OP_WAIT + 8 * d as u64, e);
            return;
        }
        let (ptr, idx) = self.buf_ptr(slot, d);
        let e = match idx {
            Some(i) => opcode::ReadFixed::new(types::Fd(src), ptr, BUF as u32, i).build(),
            None => opcode::Read::new(types::Fd(src), ptr, BUF as u32).build(),
        };
        self.submit_op(slot, OP_READ + 8 * d as u64, e);
    }

    pub(super) fn on_read(&mut self, slot: usize, d: usize, res: i32) {
        match res {
            0 => self.dir_eof(slot, d),
            r if r < 0 => self.dir_error(slot),
            n => {
                let now = now_ns();
                let c = self.conn(slot);
                c.dirs[d].pending = n as usize;
                c.dirs[d].written = 0;
                if let Some(b) = c.dirs[d].bucket.as_mut() {
                    b.spend(n as u64, now);
                }
                if let Some(u) = &c.user_share {
                    u.spend(n as u64);
                }
                self.write_out(slot, d);
            }
        }
    }

    pub(super) fn write_out(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        let (ptr, idx) = self.buf_ptr(slot, d);
        let c = self.conn(slot);
        let off = c.dirs[d].written;
        let len = (c.dirs[d].pending - off) as u32;
        // `off` is within the buffer (written < pending <= BUF).
        let p = ptr.wrapping_add(off) as *const u8;
        let e = match idx {
            Some(i) => opcode::WriteFixed::new(types::Fd(dst), p, len, i).build(),
            None => opcode::Write::new(types::Fd(dst), p, len).build(),
        };
        self.submit_op(slot, OP_WRITE + 8 * d as u64, e);
    }

    pub(super) fn on_write(&mut self, slot: usize, d: usize, res: i32) {
        if res == -libc::EAGAIN {
            return self.wait_writable(slot, d);
        }
        if res <= 0 {
            return self.dir_error(slot);
        }
        self.moved(slot, d, res as u64);
        let c = self.conn(slot);
        c.dirs[d].written += res as usize;
        if c.dirs[d].written < c.dirs[d].pending {
            self.write_out(slot, d);
        } else {
            self.start_dir(slot, d);
        }
    }
}
