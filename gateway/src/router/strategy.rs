//! The five routing strategies, as one pure function: given the eligible
//! deployments (already filtered for sensitivity, health, concurrency and
//! saturation) and their records, the order in which to try them.
//!
//! Design choice: a strategy returns a whole order, not one winner. The
//! dispatcher walks it, so failover is the same for every strategy and a
//! strategy never has to know why its first choice was refused. Ties always
//! fall back to `priority`, then to configuration order, so every order is
//! deterministic given the RNG.

use std::cmp::Ordering;

use rand::Rng;

use super::bandit::sample_beta;
use super::outcomes::DeploymentStats;
use crate::config::Strategy;

/// What a strategy knows of one eligible deployment.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub priority: u32,
    pub weight: f64,
    /// Input plus output price per 1k tokens, USD.
    pub unit_price: f64,
    pub stats: DeploymentStats,
}

/// Indices into `candidates`, in the order to try them.
pub fn order<R: Rng + ?Sized>(
    strategy: Strategy,
    candidates: &[Candidate],
    rng: &mut R,
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    let by_priority = |a: &usize, b: &usize| candidates[*a].priority.cmp(&candidates[*b].priority);
    match strategy {
        Strategy::Fallback => idx.sort_by(by_priority),
        Strategy::Weighted => {
            // Efraimidis-Spirakis: key u^(1/w), highest first, is weighted
            // sampling without replacement in one pass.
            let keys: Vec<f64> = candidates
                .iter()
                .map(|c| {
                    let u: f64 = rng.random::<f64>();
                    if c.weight > 0.0 && c.weight.is_finite() {
                        u.powf(1.0 / c.weight)
                    } else {
                        -1.0
                    }
                })
                .collect();
            idx.sort_by(|a, b| desc(keys[*a], keys[*b]).then_with(|| by_priority(a, b)));
        }
        Strategy::LeastLatency => {
            let ttft = |i: usize| candidates[i].stats.ttft_ewma_ms.unwrap_or(-1.0);
            idx.sort_by(|a, b| asc(ttft(*a), ttft(*b)).then_with(|| by_priority(a, b)));
        }
        Strategy::LowestCost => {
            let price = |i: usize| candidates[i].unit_price;
            idx.sort_by(|a, b| asc(price(*a), price(*b)).then_with(|| by_priority(a, b)));
        }
        Strategy::Learned => {
            let draws: Vec<f64> = candidates
                .iter()
                .map(|c| sample_beta(rng, c.stats.alpha, c.stats.beta))
                .collect();
            idx.sort_by(|a, b| desc(draws[*a], draws[*b]).then_with(|| by_priority(a, b)));
        }
    }
    idx
}

fn asc(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

fn desc(a: f64, b: f64) -> Ordering {
    asc(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cand(priority: u32, weight: f64, unit_price: f64) -> Candidate {
        Candidate {
            priority,
            weight,
            unit_price,
            stats: DeploymentStats::default(),
        }
    }

    fn firsts(strategy: Strategy, cands: &[Candidate], n: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = vec![0; cands.len()];
        for _ in 0..n {
            counts[order(strategy, cands, &mut rng)[0]] += 1;
        }
        counts
    }

    #[test]
    fn fallback_orders_by_priority_and_keeps_config_order_on_ties() {
        let cands = [cand(2, 1.0, 0.0), cand(0, 1.0, 0.0), cand(2, 1.0, 0.0)];
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(order(Strategy::Fallback, &cands, &mut rng), vec![1, 0, 2]);
    }

    #[test]
    fn weighted_picks_in_proportion_to_weight_and_never_zero_weight_first() {
        let cands = [cand(0, 3.0, 0.0), cand(0, 1.0, 0.0), cand(0, 0.0, 0.0)];
        let counts = firsts(Strategy::Weighted, &cands, 8000);
        assert_eq!(counts[2], 0);
        let share = counts[0] as f64 / 8000.0;
        assert!((share - 0.75).abs() < 0.03, "{counts:?}");
        // Every deployment still appears in the order, for failover.
        let mut rng = StdRng::seed_from_u64(1);
        let mut all = order(Strategy::Weighted, &cands, &mut rng);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2]);
    }

    #[test]
    fn least_latency_tries_unmeasured_then_fastest() {
        let mut cands = [cand(0, 1.0, 0.0), cand(1, 1.0, 0.0), cand(2, 1.0, 0.0)];
        cands[0].stats.ttft_ewma_ms = Some(300.0);
        cands[1].stats.ttft_ewma_ms = Some(20.0);
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            order(Strategy::LeastLatency, &cands, &mut rng),
            vec![2, 1, 0]
        );
    }

    #[test]
    fn lowest_cost_orders_by_price_then_priority() {
        let cands = [cand(0, 1.0, 0.03), cand(5, 1.0, 0.0), cand(1, 1.0, 0.0)];
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(order(Strategy::LowestCost, &cands, &mut rng), vec![2, 1, 0]);
    }

    #[test]
    fn learned_prefers_the_deployment_with_the_better_record() {
        let mut cands = [cand(0, 1.0, 0.0), cand(1, 1.0, 0.0)];
        cands[0].stats.alpha = 5.0;
        cands[0].stats.beta = 40.0;
        cands[1].stats.alpha = 40.0;
        cands[1].stats.beta = 5.0;
        let counts = firsts(Strategy::Learned, &cands, 1000);
        assert!(counts[1] > 950, "{counts:?}");
    }

    #[test]
    fn learned_explores_evenly_without_evidence_and_repeats_with_a_seed() {
        let cands = [cand(0, 1.0, 0.0), cand(1, 1.0, 0.0)];
        let counts = firsts(Strategy::Learned, &cands, 2000);
        assert!(counts[0] > 800 && counts[1] > 800, "{counts:?}");
        assert_eq!(counts, firsts(Strategy::Learned, &cands, 2000));
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [
            Strategy::Fallback,
            Strategy::Weighted,
            Strategy::LeastLatency,
            Strategy::LowestCost,
            Strategy::Learned,
        ] {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("round_robin"), None);
    }
}
