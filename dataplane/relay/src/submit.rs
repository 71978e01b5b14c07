//! A worker's io_uring and the requests waiting for room in its submission queue.
//!
//! When the queue is full, requests wait in a backlog and go in, in order, as completions make
//! room. Two rules keep that correct: a linked pair (a `Connect` and its `LinkTimeout`) goes
//! in together or not at all — split, the connect would be linked to whatever request came
//! next — and nothing jumps a non-empty backlog, so requests keep the order they were made in.
#![allow(unsafe_code)]

use io_uring::{IoUring, squeue};
use std::collections::VecDeque;
use std::io;

enum Group {
    One(squeue::Entry),
    /// The first carries `IO_LINK`; the second is linked to it.
    Linked([squeue::Entry; 2]),
}

pub(super) struct Submitter {
    ring: IoUring,
    backlog: VecDeque<Group>,
}

impl Submitter {
    pub(super) fn new(entries: u32) -> io::Result<Submitter> {
        Ok(Submitter {
            ring: IoUring::builder().build(entries)?,
            backlog: VecDeque::new(),
        })
    }

    pub(super) fn ring(&self) -> &IoUring {
        &self.ring
    }

    /// Requests in the submission queue, not yet submitted.
    #[cfg(test)]
    fn queued(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Queues one request.
    ///
    /// # Safety
    /// Every buffer, address and timespec `e` points to must stay valid and in place until
    /// its completion has been reaped.
    pub(super) unsafe fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: the caller vouches for what `e` points to.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(Group::One(e));
    }

    /// Queues `first` (which must carry `IO_LINK`) and `second` next to each other.
    ///
    /// # Safety
    /// As for [`Submitter::push`], for both.
    pub(super) unsafe fn push_linked(&mut self, first: squeue::Entry, second: squeue::Entry) {
        let pair = [first, second];
        if self.backlog.is_empty() {
            // SAFETY: as above; `push_multiple` takes both or neither.
            if unsafe { self.ring.submission().push_multiple(&pair) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(Group::Linked(pair));
    }

    /// Moves what fits from the backlog into the submission queue, in order.
    pub(super) fn flush(&mut self) {
        while let Some(g) = self.backlog.front() {
            let mut sq = self.ring.submission();
            // SAFETY: each entry was queued through `push`/`push_linked`, whose callers
            // vouched for what it points to.
            let ok = match g {
                Group::One(e) => unsafe { sq.push(e) }.is_ok(),
                Group::Linked(pair) => unsafe { sq.push_multiple(pair) }.is_ok(),
            };
            drop(sq);
            if !ok {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Requests waiting for room.
    #[cfg(test)]
    fn backlog_len(&self) -> usize {
        self.backlog
            .iter()
            .map(|g| match g {
                Group::One(_) => 1,
                Group::Linked(_) => 2,
            })
            .sum()
    }

    /// Submits what is queued and waits for at least `want` completions.
    pub(super) fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Appends every available completion (user data, result, flags) to `out`.
    pub(super) fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    fn nop(user_data: u64) -> squeue::Entry {
        opcode::Nop::new().build().user_data(user_data)
    }

    fn completions(s: &mut Submitter, want: usize) -> Vec<(u64, i32)> {
        let mut out = Vec::new();
        while out.len() < want {
            s.submit_and_wait(1).unwrap();
            let mut got = Vec::new();
            s.reap(&mut got);
            out.extend(got.into_iter().map(|(u, r, _)| (u, r)));
        }
        out
    }

    #[test]
    fn a_linked_pair_never_splits_and_nothing_jumps_the_backlog() {
        let Ok(mut s) = Submitter::new(4) else {
            eprintln!("skipped: io_uring is not available here");
            return;
        };
        // SAFETY: Nops point to nothing.
        unsafe {
            for i in 0..3 {
                s.push(nop(i));
            }
            // One slot left: the pair must wait whole, not leave its first half in the ring.
            // Its first fails (a read of no descriptor), so a linked second is cancelled.
            let read = opcode::Read::new(io_uring::types::Fd(-1), std::ptr::null_mut(), 0);
            s.push_linked(
                read.build().user_data(10).flags(squeue::Flags::IO_LINK),
                nop(11),
            );
            assert_eq!(s.queued(), 3);
            assert_eq!(s.backlog_len(), 2);
            // There is room for this one, but the backlog goes first.
            s.push(nop(20));
            assert_eq!(s.queued(), 3);
            assert_eq!(s.backlog_len(), 3);
        }
        let first = completions(&mut s, 3);
        assert_eq!(first.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1, 2]);
        s.flush();
        assert_eq!(s.backlog_len(), 0);
        let mut rest = completions(&mut s, 3);
        rest.sort();
        assert_eq!(
            rest,
            [(10, -libc::EBADF), (11, -libc::ECANCELED), (20, 0)],
            "the pair went in linked"
        );
    }
}
