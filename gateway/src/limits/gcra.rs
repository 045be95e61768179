//! The generic cell rate algorithm, the one arithmetic both limiters use:
//! the in-process one here, the shared one in `script.lua` (which must
//! stay its line-by-line twin).
//!
//! A scope's state is one number, its *theoretical arrival time* (TAT): the
//! moment its past grants would be paid off at the steady rate. A request
//! of `cost` units moves it `cost × interval` later; it is granted while
//! the new TAT is at most `window` ahead of now. Times are microseconds.
//!
//! Design choice: requests get a window of `(burst + 1) × interval`, so a
//! flood is spread out (at most `burst + 1` at once, then one per
//! interval) and "60 per minute" cannot be spent in the first second;
//! tokens get a window of a whole minute, since one request reserves many
//! tokens at once and must fit.

/// One rate dimension of one scope, as the limiters check it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Microseconds one unit takes at the steady rate.
    pub interval_us: f64,
    /// How far ahead of now the TAT may run.
    pub window_us: f64,
}

const MINUTE_US: f64 = 60_000_000.0;

impl Rate {
    /// `rpm` requests per minute, `burst` of them allowed at once above it.
    pub fn requests(rpm: u32, burst: u32) -> Self {
        let interval_us = MINUTE_US / f64::from(rpm.max(1));
        Self {
            interval_us,
            window_us: interval_us * (f64::from(burst) + 1.0),
        }
    }

    /// `tpm` tokens per minute; a minute's worth may be reserved at once.
    pub fn tokens(tpm: u64) -> Self {
        Self {
            interval_us: MINUTE_US / tpm.max(1) as f64,
            window_us: MINUTE_US,
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// `new_tat` to store; `remaining` units could still be granted now;
    /// `reset_us` until the scope is back to its initial state.
    Granted {
        new_tat: f64,
        remaining: u64,
        reset_us: u64,
    },
    /// Granted no earlier than `retry_us` from now.
    Refused { retry_us: u64 },
}

/// Checks `cost` units against a scope whose stored TAT is `tat` (`None`:
/// never used, or lapsed).
pub fn check(rate: Rate, tat: Option<f64>, now: f64, cost: f64) -> Verdict {
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat + cost * rate.interval_us;
    let allow_at = new_tat - rate.window_us;
    if now < allow_at {
        return Verdict::Refused {
            retry_us: (allow_at - now).ceil() as u64,
        };
    }
    Verdict::Granted {
        new_tat,
        remaining: ((now - allow_at) / rate.interval_us).floor() as u64,
        reset_us: (new_tat - now).ceil() as u64,
    }
}

/// The TAT after `units` are given back (negative: charged on top, when a
/// reservation fell short); `None` once nothing is owed any more.
pub fn refund(rate: Rate, tat: f64, now: f64, units: f64) -> Option<f64> {
    let tat = tat - units * rate.interval_us;
    (tat > now).then_some(tat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(v: Verdict) -> (f64, u64, u64) {
        match v {
            Verdict::Granted {
                new_tat,
                remaining,
                reset_us,
            } => (new_tat, remaining, reset_us),
            Verdict::Refused { retry_us } => panic!("refused, retry in {retry_us} us"),
        }
    }

    #[test]
    fn burst_plus_one_pass_at_once_then_one_per_interval() {
        // 60 rpm: one a second; burst 2: three at once.
        let rate = Rate::requests(60, 2);
        let now = 1_000_000_000.0;
        let mut tat = None;
        for expected_remaining in [2, 1, 0] {
            let (new_tat, remaining, _) = granted(check(rate, tat, now, 1.0));
            assert_eq!(remaining, expected_remaining);
            tat = Some(new_tat);
        }
        assert_eq!(
            check(rate, tat, now, 1.0),
            Verdict::Refused {
                retry_us: 1_000_000
            }
        );
        // A second later exactly one more fits.
        let later = now + 1_000_000.0;
        let (new_tat, remaining, reset) = granted(check(rate, tat, later, 1.0));
        assert_eq!((remaining, reset), (0, 3_000_000));
        assert!(matches!(
            check(rate, Some(new_tat), later, 1.0),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn tokens_fit_a_minute_and_a_refund_makes_room_again() {
        let rate = Rate::tokens(1000);
        let now = 5e9;
        let (tat, remaining, reset) = granted(check(rate, None, now, 800.0));
        assert_eq!(remaining, 200);
        assert_eq!(reset, 48_000_000);
        assert!(matches!(
            check(rate, Some(tat), now, 300.0),
            Verdict::Refused { .. }
        ));
        // 700 of the 800 came back unused: 300 fit now.
        let tat = refund(rate, tat, now, 700.0);
        let (_, remaining, _) = granted(check(rate, tat, now, 300.0));
        assert_eq!(remaining, 600);
        // Refunding more than is owed leaves nothing owed, never credit.
        assert_eq!(refund(rate, now + 10.0, now, 5.0), None);
        // A request larger than the minute's allowance never fits.
        assert!(matches!(
            check(rate, None, now, 1001.0),
            Verdict::Refused { .. }
        ));
    }
}
