//! linerate: NewReno-style congestion control (RFC 5681), replacing upstream's, whose
//! congestion avoidance grew the window by a segment per ACK and never cut it on a
//! duplicate-ACK loss. Written for linerate; see PATCHES.md at the crate's root.
//!
//! Slow start adds up to two segments per ACK (RFC 3465's L = 2), congestion avoidance one
//! segment per window acknowledged. The third duplicate ACK halves the window (fast
//! recovery, left at the next new ACK); a retransmission timeout halves the threshold and
//! restarts from one segment.

use crate::{socket::tcp::RttEstimator, time::Instant};

use super::Controller;

/// Initial window in segments (RFC 6928).
pub(super) const INITIAL_SEGMENTS: usize = 10;

/// What NewReno and CUBIC share: the window, the threshold and loss detection.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Loss {
    pub(super) cwnd: usize,
    pub(super) ssthresh: usize,
    pub(super) mss: usize,
    pub(super) rwnd: usize,
    dupacks: u32,
    /// The third duplicate ACK came: the next retransmission is the fast one.
    fast_pending: bool,
    pub(super) recovering: bool,
}

/// What a loss event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// Three duplicate ACKs.
    Fast,
    /// The retransmission timer.
    Timeout,
}

impl Loss {
    pub(super) fn new() -> Loss {
        let mss = 536;
        Loss {
            cwnd: INITIAL_SEGMENTS * mss,
            ssthresh: usize::MAX,
            mss,
            rwnd: 64 * 1024,
            dupacks: 0,
            fast_pending: false,
            recovering: false,
        }
    }

    pub(super) fn set_mss(&mut self, mss: usize) {
        let mss = mss.max(1);
        if self.cwnd == INITIAL_SEGMENTS * self.mss {
            self.cwnd = INITIAL_SEGMENTS * mss;
        }
        self.mss = mss;
    }

    /// A new ACK: true when it ends fast recovery.
    pub(super) fn on_ack(&mut self) -> bool {
        self.dupacks = 0;
        self.fast_pending = false;
        if self.recovering {
            self.recovering = false;
            self.cwnd = self.ssthresh;
            return true;
        }
        false
    }

    /// A duplicate ACK: `Some(Fast)` at the third (outside recovery).
    pub(super) fn on_duplicate_ack(&mut self) -> Option<Event> {
        self.dupacks = self.dupacks.saturating_add(1);
        if self.dupacks == 3 && !self.recovering {
            self.fast_pending = true;
            self.recovering = true;
            return Some(Event::Fast);
        }
        None
    }

    /// A retransmission: the fast one announced by duplicate ACKs, or a timeout.
    pub(super) fn on_retransmit(&mut self) -> Event {
        if self.fast_pending {
            self.fast_pending = false;
            Event::Fast
        } else {
            self.recovering = false;
            self.dupacks = 0;
            Event::Timeout
        }
    }

    /// The window never grows past what the peer lets us have in flight (twice, for slack).
    pub(super) fn clamp(&mut self) {
        self.cwnd = self.cwnd.clamp(self.mss, self.rwnd.saturating_mul(2).max(self.mss));
    }

    pub(super) fn set_remote_window(&mut self, remote_window: usize) {
        if self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reno {
    loss: Loss,
    /// Bytes acknowledged towards the next one-segment increase (congestion avoidance).
    acked: usize,
}

impl Reno {
    pub fn new() -> Self {
        Reno {
            loss: Loss::new(),
            acked: 0,
        }
    }
}

impl Controller for Reno {
    fn window(&self) -> usize {
        self.loss.cwnd
    }

    fn on_ack(&mut self, _now: Instant, len: usize, _rtt: &RttEstimator) {
        if self.loss.on_ack() {
            self.acked = 0;
            return;
        }
        let l = &mut self.loss;
        if l.cwnd < l.ssthresh {
            l.cwnd += len.min(2 * l.mss);
        } else {
            self.acked += len;
            if self.acked >= l.cwnd {
                self.acked -= l.cwnd;
                l.cwnd += l.mss;
            }
        }
        l.clamp();
    }

    fn on_duplicate_ack(&mut self, _now: Instant) {
        if self.loss.on_duplicate_ack() == Some(Event::Fast) {
            let l = &mut self.loss;
            l.ssthresh = (l.cwnd / 2).max(2 * l.mss);
            l.cwnd = l.ssthresh;
        }
    }

    fn on_retransmit(&mut self, _now: Instant) {
        if self.loss.on_retransmit() == Event::Timeout {
            let l = &mut self.loss;
            l.ssthresh = (l.cwnd / 2).max(2 * l.mss);
            l.cwnd = l.mss;
            self.acked = 0;
        }
    }

    fn set_mss(&mut self, mss: usize) {
        self.loss.set_mss(mss);
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        self.loss.set_remote_window(remote_window);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn rtt() -> RttEstimator {
        RttEstimator::default()
    }

    #[test]
    fn slow_start_then_halved_by_three_duplicates_then_one_segment_after_a_timeout() {
        let now = Instant::from_millis(0);
        let mut r = Reno::new();
        r.set_mss(1000);
        r.set_remote_window(1 << 20);
        assert_eq!(r.window(), 10_000);
        for _ in 0..10 {
            r.on_ack(now, 1000, &rtt());
        }
        assert_eq!(r.window(), 20_000);
        for _ in 0..3 {
            r.on_duplicate_ack(now);
        }
        assert_eq!(r.window(), 10_000);
        r.on_retransmit(now); // the fast retransmission itself changes nothing
        assert_eq!(r.window(), 10_000);
        r.on_ack(now, 1000, &rtt()); // leaves recovery at ssthresh
        assert_eq!(r.window(), 10_000);
        // Congestion avoidance: one segment per window acknowledged.
        for _ in 0..10 {
            r.on_ack(now, 1000, &rtt());
        }
        assert_eq!(r.window(), 11_000);
        r.on_retransmit(now); // a timeout
        assert_eq!(r.window(), 1000);
    }
}
