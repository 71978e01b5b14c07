//! Rate-limited warnings (the limiter only: each crate logs through its own `tracing`): a repeated event (a refused peer, a malformed message, a failed
//! send) is logged at most once per period, with how many were held back since the last one,
//! so a storm of bad input cannot fill a disk or slow the job down with logging.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of repeated event. Shared between threads (a short lock, taken only when the
/// event happens: never on a per-packet path that is doing well).
pub struct Every {
    period: Duration,
    burst: u32,
    state: Mutex<State>,
}

struct State {
    /// When the current window opened, and how many it has let through.
    window: Option<Instant>,
    passed: u32,
    held: u64,
}

impl Every {
    /// At most one event per `period`.
    pub const fn new(period: Duration) -> Every {
        Every::burst(period, 1)
    }

    /// At most `burst` events per `period` (a window opened by the first event after the
    /// last window closed).
    pub const fn burst(period: Duration, burst: u32) -> Every {
        Every {
            period,
            burst,
            state: Mutex::new(State {
                window: None,
                passed: 0,
                held: 0,
            }),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many were held back
    /// since the last one logged; `None` when it should be held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.window {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                if s.passed < self.burst {
                    s.passed += 1;
                    Some(std::mem::take(&mut s.held))
                } else {
                    s.held += 1;
                    None
                }
            }
            _ => {
                s.window = Some(now);
                s.passed = 1;
                Some(std::mem::take(&mut s.held))
            }
        }
    }
}

/// `warn!` at most once per period per call site, with the count held back as `suppressed`.
/// The calling crate must depend on `tracing`.
#[macro_export]
macro_rules! warn_every {
    ($period:expr, $($arg:tt)+) => {{
        static EVERY: $crate::lograte::Every = $crate::lograte::Every::new($period);
        match EVERY.allow() {
            None => {}
            Some(0) => ::tracing::warn!($($arg)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_period_and_the_rest_counted() {
        let e = Every::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(e.allow_at(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(e.allow_at(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(e.allow_at(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(e.allow_at(t0 + Duration::from_millis(1500)), None);
        assert_eq!(e.allow_at(t0 + Duration::from_millis(2100)), Some(1));
    }

    #[test]
    fn a_burst_passes_then_the_window_holds_the_rest() {
        let e = Every::burst(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let got: Vec<_> = (0..5)
            .map(|i| e.allow_at(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(got, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(e.allow_at(t0 + Duration::from_secs(1)), Some(2));
    }
}
