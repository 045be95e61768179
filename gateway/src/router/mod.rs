//! The router: from a public model name to the deployment that answers.
//!
//! A route (`[[routes]]` in the config) maps a public model name to
//! deployments: the local engine (`local = "<model id>"`) or a provider plus
//! its upstream model name, each with a priority, weight, price, concurrency
//! cap and residency (`on_prem` | `cloud`). A local model with no route of
//! its own gets an implicit one-deployment route, so a config without
//! `[[routes]]` serves exactly as before.
//!
//! One request goes: keep the deployments it may use (a sensitive request:
//! `on_prem` only; a text completion or a request for log-probabilities:
//! the local engine only, since providers speak chat and send no
//! log-probabilities; tools, a response format, a grammar or token biases:
//! the deployments whose [`Capabilities`] say they can, see
//! [`capability`]), drop those that cannot take it now (breaker open,
//! at their concurrency cap, a local engine saturated by its load signals),
//! order the rest by the route's [`Strategy`], and try them in that order.
//! The first that commits to an answer wins; a failure before that moves on
//! to the next (failover). Once the answer is handed back, no more failover:
//! the client may already have bytes.
//!
//! Design choice: a sensitive request whose `on_prem` deployments are all
//! saturated waits (polling, up to the route's `sensitive_wait_ms`) and then
//! gets 429 with `Retry-After`; when they are down or failing it gets 503
//! `on_prem_unavailable`. It is never offered to a cloud deployment,
//! because the residency filter runs before anything else looks at the
//! deployments.

pub mod bandit;
pub mod capability;
pub mod deployment;
mod measured;
pub mod outcomes;
mod route;
pub mod strategy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::Histogram;
use sluice_models::Tokenizer;
use tokio::time::Instant;

use crate::answer::BoxAnswer;
use crate::config::{ConfigError, SamplingDefaults};
use crate::error::ApiError;
use crate::generate;
use crate::providers::{
    self, Provider, ProviderConfig, ProviderRequest, Resilience, ResilienceConfig,
};
use crate::registry::Registry;
use crate::telemetry::{genai, Trace};
use crate::validate::{Input, Job};

pub use crate::config::{
    Capabilities, Capability, DeploymentSettings, DeploymentSpec, Price, Residency, RewardScales,
    RouteSpec, SaturationLimits, Strategy, TargetSpec,
};
pub use deployment::{Deployment, Provenance, Target, COST_HEADER, DEPLOYMENT_HEADER};
pub use outcomes::{DeploymentStats, InMemoryOutcomes, Outcome, OutcomeStore};

use measured::{Measure, MeasuredAnswer};
use route::{route_defaults, Route};

/// `gen_ai.provider.name` of the local engine.
const LOCAL_PROVIDER: &str = "sluice";

/// How often a waiting sensitive request looks again at its `on_prem` deployments.
const SENSITIVE_POLL: Duration = Duration::from_millis(20);

/// What the handlers need to know about a request besides its [`Job`].
#[derive(Clone)]
pub struct Dispatch {
    pub stream: bool,
    pub sensitive: bool,
    /// When the handler started on the request (for the overhead metric).
    pub started: Instant,
    /// The request keeps values a cloud deployment must get as
    /// placeholders (the `pseudonymize` kinds of `[pii]`); the local
    /// engine gets them as written.
    pub pseudonymize: Option<Arc<crate::pii::Pii>>,
    /// The request's trace: each attempt's inference span hangs under it.
    pub trace: Trace,
}

/// The chosen deployment's answer.
pub struct Routed {
    pub answer: BoxAnswer,
    pub provenance: Provenance,
    /// The local model's tokenizer (for log-probabilities); `None` for a provider.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

/// Every route, the local models and the outcome store.
pub struct Router {
    routes: HashMap<String, Route>,
    /// Public names of configured routes, in config order (for `/v1/models`).
    public: Vec<String>,
    registry: Arc<Registry>,
    outcomes: Arc<dyn OutcomeStore>,
    request_timeout: Duration,
    overhead: Histogram,
    /// Sampling defaults by public name, for routes served only by local
    /// models that agree on them (see [`Router::sampling_defaults`]).
    defaults: HashMap<String, SamplingDefaults>,
}

/// Why a pass over a route's deployments found none to answer.
struct Exhausted {
    /// Every deployment tried or skipped was full (saturated, at its cap).
    only_saturated: bool,
    retry_after: Duration,
    /// The most telling error seen: a client's fault first, else the last.
    error: Option<ApiError>,
    /// A local engine's own "queue full" refusal.
    engine_full: Option<ApiError>,
    /// The summed caps of the deployments skipped for being at their
    /// in-flight cap (0: none was).
    at_cap: usize,
}

impl Router {
    /// Builds providers and routes; a local model without a route of its own
    /// gets an implicit one. Errors name the config key at fault.
    pub fn new(
        specs: &[RouteSpec],
        provider_configs: &[ProviderConfig],
        registry: Arc<Registry>,
        request_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let mut providers = HashMap::new();
        for (i, cfg) in provider_configs.iter().enumerate() {
            let built = providers::build(cfg).map_err(|e| ConfigError::Invalid {
                key: format!("providers[{i}]"),
                message: e.to_string(),
            })?;
            providers.insert(cfg.name().to_string(), (built, cfg.resilience().clone()));
        }
        Self::with_providers(specs, &providers, registry, request_timeout)
    }

    /// [`Router::new`] with the providers already built (name → provider and
    /// its default resilience settings); tests hand in their own.
    pub fn with_providers(
        specs: &[RouteSpec],
        providers: &HashMap<String, (Arc<dyn Provider>, ResilienceConfig)>,
        registry: Arc<Registry>,
        request_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let mut routes = HashMap::new();
        let mut public = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut deployments = Vec::with_capacity(spec.deployments.len());
            for (j, d) in spec.deployments.iter().enumerate() {
                let target = match &d.target {
                    TargetSpec::Local { model, saturation } => Target::Local {
                        model: model.clone(),
                        saturation: *saturation,
                    },
                    TargetSpec::Provider {
                        provider,
                        upstream_model,
                        resilience,
                    } => {
                        let (built, default) =
                            providers
                                .get(provider)
                                .ok_or_else(|| ConfigError::Invalid {
                                    key: format!("routes[{i}].deployments[{j}].provider"),
                                    message: format!(
                                        "no [[providers]] entry is named `{provider}`"
                                    ),
                                })?;
                        Target::Provider {
                            provider: built.clone(),
                            upstream_model: upstream_model.clone(),
                            resilience: Arc::new(Resilience::new(
                                resilience.clone().unwrap_or_else(|| default.clone()),
                            )),
                        }
                    }
                };
                deployments.push(Arc::new(Deployment::new(
                    &spec.model,
                    d.settings.clone(),
                    target,
                )));
            }
            public.push(spec.model.clone());
            routes.insert(
                spec.model.clone(),
                Route::new(
                    spec.strategy,
                    spec.seed,
                    spec.sensitive_wait,
                    spec.reward,
                    deployments,
                ),
            );
        }
        for slot in registry.slots() {
            let id = &slot.config.id;
            if routes.contains_key(id) {
                continue;
            }
            let settings = DeploymentSettings {
                name: id.clone(),
                priority: 0,
                weight: 1.0,
                price: Price::default(),
                max_concurrency: None,
                residency: Residency::OnPrem,
                capabilities: Capabilities::local_default(),
            };
            let target = Target::Local {
                model: id.clone(),
                // The engine's own queue limit answers 429, as it always did.
                saturation: SaturationLimits::NONE,
            };
            let deployment = Arc::new(Deployment::new(id, settings, target));
            routes.insert(
                id.clone(),
                Route::new(
                    Strategy::Fallback,
                    Some(0),
                    Duration::ZERO,
                    RewardScales::default(),
                    vec![deployment],
                ),
            );
        }
        let names: Vec<&str> = routes
            .values()
            .flat_map(|r| r.deployments.iter().map(|d| &*d.name))
            .collect();
        let outcomes: Arc<dyn OutcomeStore> = Arc::new(InMemoryOutcomes::new(names));
        let defaults = routes
            .iter()
            .filter_map(|(name, route)| route_defaults(route, &registry).map(|d| (name.clone(), d)))
            .collect();
        Ok(Self {
            routes,
            public,
            registry,
            outcomes,
            request_timeout,
            overhead: metrics::histogram!(crate::metrics::OVERHEAD_SECONDS),
            defaults,
        })
    }

    /// Brings the deployments' state gauges up to date (before `/metrics` renders).
    pub fn refresh_gauges(&self) {
        for d in self.routes.values().flat_map(|r| &r.deployments) {
            d.refresh_circuit_gauge();
        }
    }

    /// Public names of the configured routes that are not local model ids
    /// (those are listed with their model already).
    pub fn public_models(&self) -> impl Iterator<Item = &str> {
        self.public
            .iter()
            .filter(|name| self.registry.get(name).is_err())
            .map(String::as_str)
    }

    /// The sampling defaults a request for `model` takes where it leaves a
    /// field out: those of its local model. A route that may send the
    /// request to a provider has none (the provider gets the request as
    /// the client sent it), nor has one whose local models disagree, since
    /// the defaults are applied before the cache key, before a deployment
    /// is chosen.
    pub fn sampling_defaults(&self, model: &str) -> Option<&SamplingDefaults> {
        self.defaults.get(model)
    }

    /// The `[[models]]` id of the route's first local deployment, if it has
    /// one: the tokenizer that counts a prompt before a deployment is chosen.
    pub fn local_model(&self, model: &str) -> Option<&str> {
        self.routes
            .get(model)?
            .deployments
            .iter()
            .find_map(|d| match &d.target {
                Target::Local { model, .. } => Some(model.as_str()),
                Target::Provider { .. } => None,
            })
    }

    /// Whether `model` names a route (explicit or a local model's).
    pub fn has_route(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The most a token can cost on `model`'s route (its dearest input and
    /// output prices) and its local models' largest default `max_tokens`:
    /// what a budget reserves for the worst case.
    pub fn ceiling(&self, model: &str) -> Option<crate::budget::RouteCeiling> {
        let route = self.routes.get(model)?;
        let mut ceiling = crate::budget::RouteCeiling {
            price: Price::default(),
            local_max_tokens: None,
            providers: false,
        };
        for d in &route.deployments {
            let price = &d.settings.price;
            ceiling.price.input_per_1k = ceiling.price.input_per_1k.max(price.input_per_1k);
            ceiling.price.output_per_1k = ceiling.price.output_per_1k.max(price.output_per_1k);
            match &d.target {
                Target::Local { model, .. } => {
                    let default = self
                        .registry
                        .get(model)
                        .ok()
                        .map(|s| s.config.default_max_tokens);
                    ceiling.local_max_tokens = ceiling.local_max_tokens.max(default);
                }
                Target::Provider { .. } => ceiling.providers = true,
            }
        }
        Some(ceiling)
    }

    /// A deployment's record, for tests and the admin view.
    pub fn stats(&self, deployment: &str) -> DeploymentStats {
        self.outcomes.stats(deployment)
    }

    /// Picks a deployment for `job` and starts its answer, failing over
    /// until one commits.
    pub async fn dispatch(&self, model: &str, job: Job, how: Dispatch) -> Result<Routed, ApiError> {
        let route = self
            .routes
            .get(model)
            .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))?;
        let usable = route.usable(model, &job, how.sensitive)?;
        let wait_until = Instant::now() + route.sensitive_wait;
        loop {
            match self.try_once(model, route, &usable, &job, &how).await {
                Ok(routed) => return Ok(routed),
                Err(ex) => {
                    if how.sensitive && ex.only_saturated && Instant::now() < wait_until {
                        tokio::time::sleep(SENSITIVE_POLL).await;
                        continue;
                    }
                    // Everything full: the engine's own refusal (with its
                    // queue and estimate) if there was one, then the
                    // deployments' in-flight caps, else a plain 429.
                    let at_cap = (ex.at_cap > 0).then(|| ApiError::InFlightLimit {
                        what: format!("The model `{model}`"),
                        limit: ex.at_cap,
                        retry_after: ex.retry_after,
                    });
                    let err =
                        ex.error
                            .or(ex.engine_full)
                            .or(at_cap)
                            .unwrap_or(ApiError::QueueFull {
                                pending: 0,
                                retry_after: ex.retry_after,
                            });
                    // A sensitive request's on_prem deployments are down or
                    // failed: say so plainly (503), since the cloud that
                    // would otherwise take over is not an option for it.
                    if how.sensitive && err.status().is_server_error() {
                        tracing::warn!(%model, error = %err, "no on_prem deployment could serve a sensitive request");
                        return Err(ApiError::OnPremUnavailable(model.to_string()));
                    }
                    return Err(err);
                }
            }
        }
    }

    /// One pass over the usable deployments in the strategy's order.
    async fn try_once(
        &self,
        route_model: &str,
        route: &Route,
        usable: &[Arc<Deployment>],
        job: &Job,
        how: &Dispatch,
    ) -> Result<Routed, Exhausted> {
        let mut ex = Exhausted {
            only_saturated: true,
            retry_after: Duration::from_secs(1),
            error: None,
            engine_full: None,
            at_cap: 0,
        };
        let mut open: Vec<&Arc<Deployment>> = Vec::with_capacity(usable.len());
        for d in usable {
            if d.circuit_open() {
                ex.only_saturated = false;
                ex.remember(ApiError::Upstream(format!(
                    "deployment `{}` is unavailable (circuit open)",
                    d.name
                )));
            } else {
                open.push(d);
            }
        }
        let order = route.order(&open, &*self.outcomes);
        for i in order {
            let d = open[i];
            let Some(slot) = d.try_acquire() else {
                d.metrics.saturated.increment(1);
                ex.at_cap = ex
                    .at_cap
                    .saturating_add(d.settings.max_concurrency.unwrap_or(usize::MAX));
                continue;
            };
            let attempt_started = Instant::now();
            // This attempt's inference span (set by the arm that calls out).
            let call: Trace;
            let started = match &d.target {
                Target::Local { model, saturation } => {
                    let ready = match self.registry.ready(model) {
                        Ok(r) => r,
                        Err(e) => {
                            ex.only_saturated = false;
                            ex.remember(e);
                            continue;
                        }
                    };
                    let load = ready.engine.load();
                    if saturation.is_saturated(&load) {
                        d.metrics.saturated.increment(1);
                        ex.retry_after =
                            ex.retry_after.max(wait_hint(load.estimated_queue_wait_ms));
                        continue;
                    }
                    call = genai::start_call(
                        &how.trace,
                        job,
                        &genai::Serving {
                            provider: LOCAL_PROVIDER,
                            request_model: route_model,
                            response_model: model,
                            deployment: &d.name,
                            remote: false,
                        },
                    );
                    match generate::start(&ready, job.clone(), self.request_timeout, call.clone())
                        .await
                    {
                        Ok(g) => Ok((
                            Box::new(g) as BoxAnswer,
                            Some(ready.engine.tokenizer().clone()),
                        )),
                        Err(full @ ApiError::QueueFull { .. }) => {
                            // The engine's own queue is full: saturated too.
                            call.fail("429", "the engine's queue is full");
                            call.end();
                            d.metrics.saturated.increment(1);
                            ex.engine_full = Some(full);
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                Target::Provider {
                    provider,
                    upstream_model,
                    resilience,
                } => {
                    let Input::Chat(messages) = &job.input else {
                        continue; // `usable` already kept providers off text completions.
                    };
                    // The mapping lives in this attempt's answer only.
                    let (messages, placeholders) = match &how.pseudonymize {
                        Some(pii) => pii.pseudonymize(messages),
                        None => (messages.clone(), Default::default()),
                    };
                    call = genai::start_call(
                        &how.trace,
                        job,
                        &genai::Serving {
                            provider: provider.kind(),
                            request_model: route_model,
                            response_model: upstream_model,
                            deployment: &d.name,
                            remote: true,
                        },
                    );
                    let req = ProviderRequest {
                        upstream_model: upstream_model.clone(),
                        messages,
                        sampling: job.sampling.clone(),
                        n: job.n,
                        stream: how.stream,
                        tools: job.tools.clone(),
                        traceparent: call.traceparent(),
                    };
                    match resilience.chat(provider.as_ref(), &req).await {
                        Ok(answer) => {
                            Ok((crate::pii::pseudonym::restore(answer, placeholders), None))
                        }
                        Err(e) => {
                            if e.is_upstream_fault() {
                                let failed = Outcome {
                                    success: false,
                                    ttft: None,
                                    per_output_token: None,
                                    cost_usd: 0.0,
                                };
                                self.outcomes.record(
                                    &d.name,
                                    &failed,
                                    route.reward.reward(&failed),
                                );
                                d.metrics.failure.increment(1);
                            }
                            tracing::warn!(deployment = %d.name, error = %e, "deployment failed before answering; failing over");
                            Err(e.to_api_error())
                        }
                    }
                }
            };
            match started {
                Ok((answer, tokenizer)) => {
                    let upstream = attempt_started.elapsed();
                    if how.stream {
                        // A stream's headers leave now: what the gateway
                        // spent until here is its overhead.
                        let total = how.started.elapsed();
                        self.overhead
                            .record(total.saturating_sub(upstream).as_secs_f64());
                    }
                    let measured = MeasuredAnswer::new(
                        genai::InferenceAnswer::wrap(answer, call),
                        Measure {
                            deployment: d.clone(),
                            outcomes: self.outcomes.clone(),
                            scales: route.reward,
                            request_started: how.started,
                            attempt_started,
                            upstream,
                            stream: how.stream,
                            overhead: self.overhead.clone(),
                            _slot: slot,
                        },
                    );
                    return Ok(Routed {
                        answer: Box::new(measured),
                        provenance: Provenance {
                            deployment: d.clone(),
                        },
                        tokenizer,
                    });
                }
                Err(e) => {
                    if call.is_on() {
                        call.fail(e.status().as_str(), e.to_string());
                        call.end();
                    }
                    d.metrics.failover.increment(1);
                    ex.only_saturated = false;
                    ex.remember(e);
                }
            }
        }
        Err(ex)
    }
}

impl Exhausted {
    fn remember(&mut self, err: ApiError) {
        let client_fault =
            err.status().is_client_error() && !matches!(err, ApiError::QueueFull { .. });
        let have_client_fault = self.error.as_ref().is_some_and(|e| {
            e.status().is_client_error() && !matches!(e, ApiError::QueueFull { .. })
        });
        if client_fault || !have_client_fault {
            self.error = Some(err);
        }
    }
}

/// `Retry-After` from an engine's queue-wait estimate, within 1..=60 s.
fn wait_hint(ms: f64) -> Duration {
    let secs = if ms.is_finite() {
        (ms / 1000.0).ceil()
    } else {
        1.0
    };
    Duration::from_secs(secs.clamp(1.0, 60.0) as u64)
}

#[cfg(test)]
mod tests;
