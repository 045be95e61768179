//! One route's deployments: which of them may take a request (residency,
//! capabilities, what a provider can answer) and in what order to try them
//! (the route's strategy over their priorities, weights, prices and
//! measured outcomes).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::strategy::{self, Candidate};
use super::{capability, Deployment, DeploymentStats, OutcomeStore, Target};
use crate::config::{Residency, RewardScales, SamplingDefaults, Strategy};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::validate::{Input, Job};

pub(super) struct Route {
    pub(super) strategy: Strategy,
    pub(super) sensitive_wait: Duration,
    pub(super) reward: RewardScales,
    pub(super) deployments: Vec<Arc<Deployment>>,
    /// Only the weighted and learned strategies draw from it; a plain mutex
    /// (never held across an await) is cheaper than anything cleverer for
    /// a few draws per request.
    rng: Mutex<StdRng>,
}

/// The defaults every deployment of `route` shares: all local, all the
/// same, and not empty.
pub(super) fn route_defaults(route: &Route, registry: &Registry) -> Option<SamplingDefaults> {
    let mut shared: Option<&SamplingDefaults> = None;
    for d in &route.deployments {
        let Target::Local { model, .. } = &d.target else {
            return None;
        };
        let own = &registry.get(model).ok()?.config.defaults;
        match shared {
            Some(s) if s != own => return None,
            _ => shared = Some(own),
        }
    }
    shared.filter(|d| !d.is_empty()).cloned()
}

impl Route {
    pub(super) fn new(
        strategy: Strategy,
        seed: Option<u64>,
        sensitive_wait: Duration,
        reward: RewardScales,
        deployments: Vec<Arc<Deployment>>,
    ) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            strategy,
            sensitive_wait,
            reward,
            deployments,
            rng: Mutex::new(rng),
        }
    }

    /// The deployments this request may ever use; an error when none is
    /// left, saying why.
    pub(super) fn usable(
        &self,
        model: &str,
        job: &Job,
        sensitive: bool,
    ) -> Result<Vec<Arc<Deployment>>, ApiError> {
        let chat = matches!(job.input, Input::Chat(_));
        let logprobs = job.sampling.logprobs.is_some();
        let needs = capability::needs(job);
        let mut usable = Vec::with_capacity(self.deployments.len());
        let mut residency_refused = false;
        let mut provider_refused = false;
        // The first need a deployment (that could otherwise take the
        // request) lacked: named in the 400 when none is left.
        let mut lacking: Option<&capability::Need> = None;
        for d in &self.deployments {
            if sensitive && d.settings.residency != Residency::OnPrem {
                residency_refused = true;
                continue;
            }
            if !d.is_local() && (!chat || logprobs) {
                provider_refused = true;
                continue;
            }
            if let Some(need) = capability::first_missing(d.settings.capabilities, &needs) {
                lacking = lacking.or(Some(need));
                continue;
            }
            usable.push(d.clone());
        }
        if !usable.is_empty() {
            return Ok(usable);
        }
        if let Some(need) = lacking {
            return Err(ApiError::unsupported(need.param, need.message(model)));
        }
        if residency_refused && !provider_refused {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "`{model}` has no on_prem deployment, and this request is sensitive \
                     (x-sluice-sensitive or the API key's policy): it may not leave the machine"
                ),
            ));
        }
        if logprobs {
            return Err(ApiError::unsupported(
                "logprobs",
                format!("`{model}` is served by upstream providers here, which return no log-probabilities"),
            ));
        }
        Err(ApiError::unsupported(
            "prompt",
            format!(
                "`{model}` is served by upstream chat providers here; use /v1/chat/completions"
            ),
        ))
    }

    /// The order to try `candidates` in.
    pub(super) fn order(
        &self,
        candidates: &[&Arc<Deployment>],
        outcomes: &dyn OutcomeStore,
    ) -> Vec<usize> {
        let cands: Vec<Candidate> = candidates
            .iter()
            .map(|d| Candidate {
                priority: d.settings.priority,
                weight: d.settings.weight,
                unit_price: d.settings.price.unit(),
                stats: match self.strategy {
                    Strategy::LeastLatency | Strategy::Learned => outcomes.stats(&d.name),
                    _ => DeploymentStats::default(),
                },
            })
            .collect();
        if cands.len() <= 1 {
            return (0..cands.len()).collect();
        }
        // Deterministic strategies draw nothing from it; the uncontended
        // lock costs less than a second code path.
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        strategy::order(self.strategy, &cands, &mut *rng)
    }
}
