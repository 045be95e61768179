//! The engine's time source, injectable so tests step time by hand (warm
//! sessions expire by it) instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the engine reads "now".
#[derive(Clone, Default)]
pub enum Clock {
    /// The real monotonic clock.
    #[default]
    System,
    /// A clock that moves only when the test advances it.
    Manual(Arc<ManualClock>),
}

impl Clock {
    pub fn system() -> Self {
        Self::System
    }

    pub fn manual(manual: Arc<ManualClock>) -> Self {
        Self::Manual(manual)
    }

    pub fn now(&self) -> Instant {
        match self {
            Self::System => Instant::now(),
            Self::Manual(m) => m.now(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("System"),
            Self::Manual(_) => f.write_str("Manual"),
        }
    }
}

/// The system clock equals itself; a manual one only itself (configs compare).
impl PartialEq for Clock {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::System, Self::System) => true,
            (Self::Manual(a), Self::Manual(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A clock for tests: starts at the real "now" and moves only by
/// [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed_ns: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            elapsed_ns: AtomicU64::new(0),
        })
    }

    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_add(ns, Ordering::SeqCst);
    }

    pub fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }
}
