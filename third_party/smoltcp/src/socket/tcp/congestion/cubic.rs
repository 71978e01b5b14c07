//! linerate: CUBIC (RFC 9438), replacing upstream's, which computed its curve in bytes with
//! the constant meant for segments (so it crawled back after a loss) and did not cut the
//! window on a loss. Written for linerate; see PATCHES.md at the crate's root.
//!
//! Slow start as NewReno; after a loss the window is cut to beta = 0.7 of itself and then
//! follows W(t) = C (t - K)^3 + W_max in segments (C = 0.4), never below the Reno-friendly
//! estimate; fast convergence lowers W_max when losses come before it was reached again.

use crate::{socket::tcp::RttEstimator, time::Instant};

use super::Controller;
use super::reno::{Event, Loss};

const BETA_CUBIC: f64 = 0.7;
const C: f64 = 0.4;

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cubic {
    loss: Loss,
    /// Segments, before the last loss.
    w_max: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    k: f64,
    origin: f64,
    /// Reno-friendly estimate, segments.
    w_est: f64,
}

impl Cubic {
    pub fn new() -> Cubic {
        Cubic {
            loss: Loss::new(),
            w_max: 0.0,
            epoch: None,
            k: 0.0,
            origin: 0.0,
            w_est: 0.0,
        }
    }

    fn segments(&self) -> f64 {
        self.loss.cwnd as f64 / self.loss.mss as f64
    }

    fn cut(&mut self, event: Event) {
        let w = self.segments();
        // Fast convergence: a flow losing below its last maximum leaves room to others.
        self.w_max = if w < self.w_max {
            w * (1.0 + BETA_CUBIC) / 2.0
        } else {
            w
        };
        let l = &mut self.loss;
        l.ssthresh = ((l.cwnd as f64 * BETA_CUBIC) as usize).max(2 * l.mss);
        l.cwnd = match event {
            Event::Fast => l.ssthresh,
            Event::Timeout => l.mss,
        };
        self.epoch = None;
    }
}

impl Controller for Cubic {
    fn window(&self) -> usize {
        self.loss.cwnd
    }

    fn on_ack(&mut self, now: Instant, len: usize, _rtt: &RttEstimator) {
        if self.loss.on_ack() {
            return;
        }
        let mss = self.loss.mss as f64;
        if self.loss.cwnd < self.loss.ssthresh {
            self.loss.cwnd += len.min(2 * self.loss.mss);
            self.loss.clamp();
            return;
        }
        let w = self.segments();
        let epoch = match self.epoch {
            Some(e) => e,
            None => {
                self.epoch = Some(now);
                if w < self.w_max {
                    self.k = ((self.w_max - w) / C).cbrt();
                    self.origin = self.w_max;
                } else {
                    self.k = 0.0;
                    self.origin = w;
                }
                self.w_est = w;
                now
            }
        };
        let t = (now - epoch).total_millis() as f64 / 1000.0;
        let target = C * (t - self.k).powi(3) + self.origin;
        let acked = len as f64 / mss;
        // Reno-friendly region (RFC 9438 4.3).
        self.w_est += 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC) * acked / w;
        let goal = target.max(self.w_est);
        if goal > w {
            // Towards the curve: (goal - w) / w segments per segment acknowledged, at most
            // half a segment per segment (RFC 9438 4.2).
            let step = ((goal - w) / w).min(0.5) * acked;
            self.loss.cwnd += (step * mss) as usize;
        }
        self.loss.clamp();
    }

    fn on_duplicate_ack(&mut self, _now: Instant) {
        if self.loss.on_duplicate_ack() == Some(Event::Fast) {
            self.cut(Event::Fast);
        }
    }

    fn on_retransmit(&mut self, _now: Instant) {
        if self.loss.on_retransmit() == Event::Timeout {
            self.cut(Event::Timeout);
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

    #[test]
    fn a_loss_cuts_to_seven_tenths_and_the_curve_climbs_back_past_it() {
        let rtt = RttEstimator::default();
        let mut c = Cubic::new();
        c.set_mss(1000);
        c.set_remote_window(1 << 24);
        let mut now = Instant::from_millis(0);
        for _ in 0..90 {
            c.on_ack(now, 1000, &rtt);
        }
        assert_eq!(c.window(), 100_000);
        for _ in 0..3 {
            c.on_duplicate_ack(now);
        }
        assert_eq!(c.window(), 70_000);
        c.on_retransmit(now);
        c.on_ack(now, 1000, &rtt);
        assert_eq!(c.window(), 70_000);
        // K = cbrt(30 / 0.4) = 4.2 s: back at 100 segments then, beyond it after.
        for _ in 0..600 {
            now += crate::time::Duration::from_millis(10);
            c.on_ack(now, 1000, &rtt);
        }
        assert!(c.window() > 100_000, "{}", c.window());
        c.on_retransmit(now); // a timeout: one segment
        assert_eq!(c.window(), 1000);
    }
}
