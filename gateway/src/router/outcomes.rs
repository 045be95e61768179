//! What each deployment's past requests looked like: success or failure,
//! time to first token, latency per output token, cost. The strategies read
//! a [`DeploymentStats`] snapshot; the dispatcher records an [`Outcome`] at
//! the end of every answer.
//!
//! Design choice: the store sits behind the small [`OutcomeStore`] trait and
//! keeps the bandit's Beta parameters itself (not just raw counts), so a
//! durable store (Redis/PostgreSQL, later) can persist exactly what the
//! router learns and hand it back after a restart. The in-memory store is
//! bounded by construction: it knows only the configured deployments, one
//! small record each, and ignores names it was not built with.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How one request went on one deployment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub success: bool,
    /// Time from the attempt's start to its first token, when one came.
    pub ttft: Option<Duration>,
    /// Mean time per output token after the first, when there were two or more.
    pub per_output_token: Option<Duration>,
    pub cost_usd: f64,
}

/// A deployment's record, as the strategies see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeploymentStats {
    pub successes: u64,
    pub failures: u64,
    /// Exponentially weighted mean TTFT in milliseconds; `None` until measured.
    pub ttft_ewma_ms: Option<f64>,
    pub per_token_ewma_ms: Option<f64>,
    pub cost_ewma_usd: Option<f64>,
    /// Thompson sampling's Beta(alpha, beta) over the reward; starts at the
    /// uniform prior Beta(1, 1).
    pub alpha: f64,
    pub beta: f64,
}

impl Default for DeploymentStats {
    fn default() -> Self {
        Self {
            successes: 0,
            failures: 0,
            ttft_ewma_ms: None,
            per_token_ewma_ms: None,
            cost_ewma_usd: None,
            alpha: 1.0,
            beta: 1.0,
        }
    }
}

/// Weight of the newest sample in the moving averages.
const EWMA_WEIGHT: f64 = 0.2;
/// The Beta parameters are scaled down once their sum passes this, so old
/// evidence fades and a deployment that turns slow or failing loses traffic
/// within tens of requests, not thousands.
pub const MAX_EVIDENCE: f64 = 100.0;

impl DeploymentStats {
    /// Folds in one outcome whose bandit reward (in 0..=1) is `reward`.
    pub fn fold(&mut self, outcome: &Outcome, reward: f64) {
        let ewma = |old: Option<f64>, sample: f64| {
            Some(match old {
                None => sample,
                Some(o) => (1.0 - EWMA_WEIGHT) * o + EWMA_WEIGHT * sample,
            })
        };
        if outcome.success {
            self.successes += 1;
        } else {
            self.failures += 1;
        }
        if let Some(t) = outcome.ttft {
            self.ttft_ewma_ms = ewma(self.ttft_ewma_ms, t.as_secs_f64() * 1000.0);
        }
        if let Some(t) = outcome.per_output_token {
            self.per_token_ewma_ms = ewma(self.per_token_ewma_ms, t.as_secs_f64() * 1000.0);
        }
        if outcome.success {
            self.cost_ewma_usd = ewma(self.cost_ewma_usd, outcome.cost_usd);
        }
        let reward = if reward.is_finite() {
            reward.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.alpha += reward;
        self.beta += 1.0 - reward;
        let total = self.alpha + self.beta;
        if total > MAX_EVIDENCE {
            let scale = MAX_EVIDENCE / total;
            // Never below the prior's 1: Beta needs positive parameters and
            // one bad spell should not make a deployment look certain-bad.
            self.alpha = (self.alpha * scale).max(1.0);
            self.beta = (self.beta * scale).max(1.0);
        }
    }
}

/// Where outcomes are kept.
pub trait OutcomeStore: Send + Sync {
    /// Records one outcome with its bandit reward.
    fn record(&self, deployment: &str, outcome: &Outcome, reward: f64);
    /// The deployment's record (the prior when nothing is known).
    fn stats(&self, deployment: &str) -> DeploymentStats;
}

/// Outcomes in process memory, one lock per deployment so that requests to
/// different deployments never contend.
#[derive(Debug, Default)]
pub struct InMemoryOutcomes {
    records: HashMap<String, Mutex<DeploymentStats>>,
}

impl InMemoryOutcomes {
    /// A store for exactly these deployments.
    pub fn new<'a>(deployments: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            records: deployments
                .into_iter()
                .map(|name| (name.to_string(), Mutex::new(DeploymentStats::default())))
                .collect(),
        }
    }
}

impl OutcomeStore for InMemoryOutcomes {
    fn record(&self, deployment: &str, outcome: &Outcome, reward: f64) {
        if let Some(cell) = self.records.get(deployment) {
            // A panic while holding this lock cannot leave the record half
            // written in a harmful way (plain numbers), so poisoning is ignored.
            cell.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fold(outcome, reward);
        }
    }

    fn stats(&self, deployment: &str) -> DeploymentStats {
        self.records
            .get(deployment)
            .map(|cell| *cell.lock().unwrap_or_else(PoisonError::into_inner))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ttft_ms: u64) -> Outcome {
        Outcome {
            success: true,
            ttft: Some(Duration::from_millis(ttft_ms)),
            per_output_token: None,
            cost_usd: 0.001,
        }
    }

    #[test]
    fn first_sample_sets_the_average_and_later_ones_move_it_a_fifth() {
        let store = InMemoryOutcomes::new(["a"]);
        store.record("a", &ok(100), 1.0);
        assert_eq!(store.stats("a").ttft_ewma_ms, Some(100.0));
        store.record("a", &ok(200), 1.0);
        let ttft = store.stats("a").ttft_ewma_ms.unwrap();
        assert!((ttft - 120.0).abs() < 1e-9, "{ttft}");
    }

    #[test]
    fn rewards_move_alpha_and_failures_move_beta() {
        let store = InMemoryOutcomes::new(["a"]);
        store.record("a", &ok(10), 0.75);
        let failed = Outcome {
            success: false,
            ttft: None,
            per_output_token: None,
            cost_usd: 0.0,
        };
        store.record("a", &failed, 0.0);
        let s = store.stats("a");
        assert_eq!((s.successes, s.failures), (1, 1));
        assert!((s.alpha - 1.75).abs() < 1e-9 && (s.beta - 2.25).abs() < 1e-9);
        assert_eq!(
            s.cost_ewma_usd,
            Some(0.001),
            "failures carry no cost sample"
        );
    }

    #[test]
    fn evidence_is_capped_so_old_outcomes_fade() {
        let mut s = DeploymentStats::default();
        for _ in 0..1000 {
            s.fold(&ok(1), 1.0);
        }
        assert!(s.alpha + s.beta <= MAX_EVIDENCE + 1.0);
        // Twenty failures after a thousand successes already show.
        for _ in 0..20 {
            s.fold(&ok(1), 0.0);
        }
        assert!(s.alpha / (s.alpha + s.beta) < 0.9, "{s:?}");
    }

    #[test]
    fn unknown_deployments_are_ignored_and_read_as_the_prior() {
        let store = InMemoryOutcomes::new(["a"]);
        store.record("zzz", &ok(1), 1.0);
        assert_eq!(store.stats("zzz"), DeploymentStats::default());
    }
}
