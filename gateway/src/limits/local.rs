//! The in-process limiter: the same checks as the shared one, over this
//! process's own grants. In front of Redis it refuses what this process
//! alone has already used up (no round trip needed: the shared count can
//! only be higher); without Redis, or while it is away in `open` mode, it
//! is the limiter.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::gcra::{self, Verdict};
use super::scope::{Check, Dimension};
use super::Outcome;

/// Past this many idle scopes the map is swept of those with nothing owed.
const SWEEP_AT: usize = 65_536;

pub struct LocalLimiter {
    /// A plain mutex: each request holds it for a few map lookups and
    /// never across an await.
    state: Mutex<State>,
    epoch: Instant,
}

#[derive(Default)]
struct State {
    /// Counter key → its theoretical arrival time (µs since `epoch`).
    tats: HashMap<String, f64>,
    /// Counter key → requests in flight.
    parallel: HashMap<String, u64>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl LocalLimiter {
    fn now_us(&self) -> f64 {
        // Start a minute in, so "never used" (the TAT is now) and a fresh
        // epoch cannot be confused with debt.
        self.epoch.elapsed().as_secs_f64() * 1e6 + 60e6
    }

    /// Checks every limit with `tokens` reserved; commits all or none.
    pub fn admit(&self, checks: &[Check], tokens: u64) -> Outcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock: a time read before it can be older than the
        // TAT another thread has just stored, and at a high rate that debt
        // alone refuses a request nobody else is competing with.
        let now = self.now_us();
        let mut standings = Vec::with_capacity(checks.len());
        let mut new_tats = Vec::with_capacity(checks.len());
        for (i, check) in checks.iter().enumerate() {
            let key = check.key();
            match check.rate {
                Some(rate) => {
                    let cost = cost(check, tokens);
                    match gcra::check(rate, state.tats.get(&key).copied(), now, cost) {
                        Verdict::Granted {
                            new_tat,
                            remaining,
                            reset_us,
                        } => {
                            standings.push((remaining, reset_us));
                            new_tats.push((key, new_tat));
                        }
                        Verdict::Refused { retry_us } => {
                            return Outcome::Refused { check: i, retry_us }
                        }
                    }
                }
                None => {
                    let held = state.parallel.get(&key).copied().unwrap_or(0);
                    if held >= check.limit {
                        return Outcome::Refused {
                            check: i,
                            retry_us: 1_000_000,
                        };
                    }
                    standings.push((check.limit - held - 1, 0));
                }
            }
        }
        for (key, tat) in new_tats {
            state.tats.insert(key, tat);
        }
        for check in checks.iter().filter(|c| c.rate.is_none()) {
            *state.parallel.entry(check.key()).or_insert(0) += 1;
        }
        if state.tats.len() > SWEEP_AT {
            state.tats.retain(|_, tat| *tat > now);
        }
        Outcome::Granted(standings)
    }

    /// Gives back `tokens` (negative: charges them on top), `requests` and
    /// the parallel slot of an admitted request.
    pub fn give_back(&self, checks: &[Check], tokens: i64, requests: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.now_us();
        for check in checks {
            let key = check.key();
            let units = match check.dimension {
                Dimension::Tokens => tokens as f64,
                Dimension::Requests => requests as f64,
                Dimension::Parallel => {
                    if let Some(held) = state.parallel.get_mut(&key) {
                        *held = held.saturating_sub(1);
                        if *held == 0 {
                            state.parallel.remove(&key);
                        }
                    }
                    continue;
                }
            };
            let Some(rate) = check.rate else { continue };
            if units == 0.0 {
                continue;
            }
            let tat = state.tats.get(&key).copied().unwrap_or(now).max(now);
            match gcra::refund(rate, tat, now, units) {
                Some(tat) => state.tats.insert(key, tat),
                None => state.tats.remove(&key),
            };
        }
    }
}

/// What a request costs in a check's dimension.
pub(super) fn cost(check: &Check, tokens: u64) -> f64 {
    match check.dimension {
        Dimension::Tokens => tokens as f64,
        Dimension::Requests | Dimension::Parallel => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::gcra::Rate;
    use crate::limits::scope::ScopeKind;

    fn check(dimension: Dimension, limit: u64, burst: u32) -> Check {
        Check {
            kind: ScopeKind::Key,
            scope: "key:t".into(),
            dimension,
            limit,
            rate: match dimension {
                Dimension::Requests => Some(Rate::requests(limit as u32, burst)),
                Dimension::Tokens => Some(Rate::tokens(limit)),
                Dimension::Parallel => None,
            },
        }
    }

    #[test]
    fn a_refusal_in_one_dimension_commits_nothing_in_the_others() {
        let local = LocalLimiter::default();
        let checks = [
            check(Dimension::Requests, 600, 10),
            check(Dimension::Tokens, 100, 0),
            check(Dimension::Parallel, 1, 0),
        ];
        assert!(matches!(local.admit(&checks, 60), Outcome::Granted(_)));
        // The slot is taken: refused, and the tokens are not spent again.
        assert!(matches!(
            local.admit(&checks, 30),
            Outcome::Refused { check: 2, .. }
        ));
        local.give_back(&checks, 50, 0);
        // 60 reserved, 10 used: 90 of 100 are free again.
        let Outcome::Granted(standings) = local.admit(&checks, 90) else {
            panic!("refused after the slot and the tokens came back");
        };
        assert_eq!(standings[1].0, 0);
        assert!(matches!(
            local.admit(&checks, 1),
            Outcome::Refused { check: 1, .. }
        ));
    }

    #[test]
    fn requests_are_refused_past_the_rate_and_an_undo_gives_one_back() {
        let local = LocalLimiter::default();
        let checks = [check(Dimension::Requests, 60, 0)];
        assert!(matches!(local.admit(&checks, 0), Outcome::Granted(_)));
        let Outcome::Refused { retry_us, .. } = local.admit(&checks, 0) else {
            panic!("a second request within the interval passed");
        };
        assert!((900_001..=1_000_000).contains(&retry_us), "{retry_us}");
        local.give_back(&checks, 0, 1);
        assert!(matches!(local.admit(&checks, 0), Outcome::Granted(_)));
    }

    /// At the highest rate a key can have no thread can exceed it, so any
    /// refusal is an artefact of threads racing each other's clocks (a
    /// benchmark's key with 100M requests/min got 429s from two HTTP
    /// workers while the clock was read outside the lock).
    #[test]
    fn threads_admitting_together_are_never_refused_below_the_rate() {
        let local = LocalLimiter::default();
        let checks = [check(Dimension::Requests, u64::from(u32::MAX), 0)];
        let refused = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50_000 {
                        if matches!(local.admit(&checks, 0), Outcome::Refused { .. }) {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(refused.into_inner(), 0);
    }
}
