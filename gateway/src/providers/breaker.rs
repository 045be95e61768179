//! The per-deployment circuit breaker: closed → open after N consecutive
//! failed calls → half-open after a cool-down, letting exactly one probe
//! through → closed on its success, open again on its failure.
//!
//! Design choice: the clock is a parameter (`*_at(now)`, with `allow`,
//! `record` and `state` as the `Instant::now()` shorthands), so the state
//! machine is tested exactly, without sleeping; and a probe slot that is
//! never reported back (its request was dropped) frees itself after another
//! cool-down instead of wedging the breaker half-open forever.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Rejecting every call until the cool-down ends.
    Open,
    /// Letting one probe through; its outcome closes or reopens it.
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        since: Instant,
    },
    /// `probe_since` is when the probe slot was handed out; a probe whose
    /// caller vanished (a dropped request) frees the slot after a cool-down.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

/// Per-deployment circuit breaker. A plain mutex: every critical section is
/// a few comparisons, never held across an await.
#[derive(Debug)]
pub struct CircuitBreaker {
    failures_to_open: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            cooldown,
            inner: Mutex::new(Inner::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    /// Whether a call may go ahead now: closed, or the half-open probe slot.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&self, now: Instant) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return true;
        };
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { since } => {
                if now.saturating_duration_since(since) >= self.cooldown {
                    *inner = Inner::HalfOpen {
                        probe_since: Some(now),
                    };
                    true
                } else {
                    false
                }
            }
            Inner::HalfOpen { probe_since } => match probe_since {
                Some(t) if now.saturating_duration_since(t) < self.cooldown => false,
                _ => {
                    *inner = Inner::HalfOpen {
                        probe_since: Some(now),
                    };
                    true
                }
            },
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, ok: bool) {
        self.record_at(ok, Instant::now());
    }

    pub fn record_at(&self, ok: bool, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let next = match (&*inner, ok) {
            (Inner::Closed { .. }, true) | (Inner::HalfOpen { .. }, true) => Inner::Closed {
                consecutive_failures: 0,
            },
            (
                Inner::Closed {
                    consecutive_failures,
                },
                false,
            ) => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.failures_to_open {
                    Inner::Open { since: now }
                } else {
                    Inner::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            (Inner::HalfOpen { .. }, false) => Inner::Open { since: now },
            // A straggler that started before the breaker opened says
            // nothing about now.
            (Inner::Open { since }, _) => Inner::Open { since: *since },
        };
        *inner = next;
    }

    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    /// An open breaker whose cool-down is over reads as half-open: the next
    /// `allow` lets a probe through.
    pub fn state_at(&self, now: Instant) -> BreakerState {
        let Ok(inner) = self.inner.lock() else {
            return BreakerState::Closed;
        };
        match *inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { since } if now.saturating_duration_since(since) >= self.cooldown => {
                BreakerState::HalfOpen
            }
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_rejects_fast() {
        let b = CircuitBreaker::new(3, ms(1000));
        let t0 = Instant::now();
        b.record_at(false, t0);
        b.record_at(false, t0);
        assert_eq!(b.state_at(t0), BreakerState::Closed);
        assert!(b.allow_at(t0));
        b.record_at(false, t0);
        assert_eq!(b.state_at(t0), BreakerState::Open);
        assert!(!b.allow_at(t0 + ms(999)));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = CircuitBreaker::new(2, ms(1000));
        let t0 = Instant::now();
        b.record_at(false, t0);
        b.record_at(true, t0);
        b.record_at(false, t0);
        assert_eq!(b.state_at(t0), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_closes_on_success() {
        let b = CircuitBreaker::new(1, ms(1000));
        let t0 = Instant::now();
        b.record_at(false, t0);
        let t1 = t0 + ms(1000);
        assert_eq!(b.state_at(t1), BreakerState::HalfOpen);
        assert!(b.allow_at(t1), "the probe");
        assert!(!b.allow_at(t1), "a second caller while the probe runs");
        b.record_at(true, t1);
        assert_eq!(b.state_at(t1), BreakerState::Closed);
        assert!(b.allow_at(t1));
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cooldown() {
        let b = CircuitBreaker::new(1, ms(1000));
        let t0 = Instant::now();
        b.record_at(false, t0);
        let t1 = t0 + ms(1500);
        assert!(b.allow_at(t1));
        b.record_at(false, t1);
        assert_eq!(b.state_at(t1), BreakerState::Open);
        assert!(!b.allow_at(t1 + ms(999)));
        assert!(b.allow_at(t1 + ms(1000)));
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_a_cooldown() {
        let b = CircuitBreaker::new(1, ms(1000));
        let t0 = Instant::now();
        b.record_at(false, t0);
        assert!(b.allow_at(t0 + ms(1000)));
        assert!(!b.allow_at(t0 + ms(1500)));
        assert!(b.allow_at(t0 + ms(2000)));
    }

    #[test]
    fn straggler_outcomes_do_not_close_an_open_breaker() {
        let b = CircuitBreaker::new(1, ms(1000));
        let t0 = Instant::now();
        b.record_at(false, t0);
        b.record_at(true, t0 + ms(10));
        assert_eq!(b.state_at(t0 + ms(10)), BreakerState::Open);
    }
}
