//! The `learned` strategy's pieces: the reward of one outcome, and Thompson
//! sampling over Beta posteriors.
//!
//! The reward of an outcome is a number in 0..=1:
//!
//! ```text
//! failure: 0
//! success: 1 / (1 + ttft_ms / latency_scale_ms
//!                  + per_token_ms / per_token_scale_ms
//!                  + cost_usd / cost_scale_usd)
//! ```
//!
//! so a fast, cheap success earns nearly 1, and a success that took one
//! `latency_scale_ms` to its first token earns at most 1/2. Each deployment
//! keeps Beta(alpha, beta); a reward r adds r to alpha and 1 - r to beta (the
//! usual way of feeding a fractional reward to a Beta-Bernoulli bandit).
//! To choose, every eligible deployment draws a sample from its Beta and the
//! highest draw goes first: a deployment with little evidence draws widely
//! and gets explored, one with a long record of good rewards wins most draws.
//!
//! Design choice: Beta draws come from two Gamma draws (Marsaglia and Tsang)
//! over the router's own seeded RNG, not from another crate: the seed makes
//! routing tests deterministic, and `rand_distr` would be one more
//! dependency for forty lines.

use rand::Rng;

use super::outcomes::Outcome;
use crate::config::RewardScales;

impl RewardScales {
    /// The reward of one outcome, in 0..=1.
    pub fn reward(&self, outcome: &Outcome) -> f64 {
        if !outcome.success {
            return 0.0;
        }
        let ratio = |value: f64, scale: f64| {
            if scale > 0.0 && value.is_finite() {
                (value / scale).max(0.0)
            } else {
                0.0
            }
        };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let penalty = ratio(outcome.ttft.map_or(0.0, ms), self.latency_scale_ms)
            + ratio(
                outcome.per_output_token.map_or(0.0, ms),
                self.per_token_scale_ms,
            )
            + ratio(outcome.cost_usd, self.cost_scale_usd);
        1.0 / (1.0 + penalty)
    }
}

/// A draw from Beta(alpha, beta); both parameters must be positive (they are
/// at least 1 in the outcome store).
pub fn sample_beta<R: Rng + ?Sized>(rng: &mut R, alpha: f64, beta: f64) -> f64 {
    let x = sample_gamma(rng, alpha.max(f64::MIN_POSITIVE));
    let y = sample_gamma(rng, beta.max(f64::MIN_POSITIVE));
    if x + y > 0.0 {
        x / (x + y)
    } else {
        0.5
    }
}

/// A draw from Gamma(shape, 1) by Marsaglia and Tsang's method; shapes
/// below 1 use the boost Gamma(a) = Gamma(a + 1) * U^(1/a).
fn sample_gamma<R: Rng + ?Sized>(rng: &mut R, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return sample_gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u: f64 = rng.random::<f64>();
        if u < 1.0 - 0.0331 * x.powi(4) {
            return d * v;
        }
        if u > 0.0 && u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A standard normal draw (Box-Muller; one of the pair is thrown away,
/// which costs little next to a request).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Duration;

    #[test]
    fn beta_samples_have_the_right_mean_and_stay_in_unit_range() {
        let mut rng = StdRng::seed_from_u64(7);
        for (a, b) in [(1.0, 1.0), (2.0, 8.0), (30.0, 3.0), (0.5, 0.5)] {
            let n = 20_000;
            let mut sum = 0.0;
            for _ in 0..n {
                let x = sample_beta(&mut rng, a, b);
                assert!((0.0..=1.0).contains(&x));
                sum += x;
            }
            let mean = sum / n as f64;
            let want = a / (a + b);
            assert!(
                (mean - want).abs() < 0.01,
                "Beta({a},{b}): {mean} vs {want}"
            );
        }
    }

    #[test]
    fn failures_earn_nothing_and_slow_or_costly_successes_earn_less() {
        let scales = RewardScales::default();
        let outcome = |success, ttft_ms, cost_usd| Outcome {
            success,
            ttft: Some(Duration::from_millis(ttft_ms)),
            per_output_token: None,
            cost_usd,
        };
        assert_eq!(scales.reward(&outcome(false, 1, 0.0)), 0.0);
        let fast = scales.reward(&outcome(true, 10, 0.0));
        let slow = scales.reward(&outcome(true, 1000, 0.0));
        let costly = scales.reward(&outcome(true, 10, 0.01));
        assert!(fast > 0.98);
        assert!((slow - 0.5).abs() < 1e-9);
        assert!(costly < 0.51 && costly > 0.49);
    }
}
