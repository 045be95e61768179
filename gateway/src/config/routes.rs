//! `[[providers]]` and `[[routes]]`: the upstreams, and the model map from a
//! public model name to its deployments. Resolved into the router's own
//! [`RouteSpec`]s here, so every bad value fails at start naming its key.
//!
//! Design choice: a deployment names its target with exactly one of
//! `local = "<model id>"` or `provider = "<name>"` (+ `upstream_model`),
//! and the residency defaults follow the target (local: `on_prem`, a
//! provider: `cloud`). Marking a provider `on_prem` (an external vLLM in
//! the same network) is therefore an explicit act, never a default that
//! could leak sensitive data.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::capabilities::Capabilities;
use super::providers::{ProviderConfig, ResilienceConfig};
use super::{invalid, ConfigError, GuardScoring, ModelConfig};

const DEFAULT_SENSITIVE_WAIT_MS: u64 = 1000;
const DEFAULT_MAX_QUEUE_WAIT_MS: f64 = 1000.0;
const DEFAULT_MIN_FREE_KV_FRACTION: f64 = 0.05;
/// Calls in flight to one provider deployment unless `max_concurrency`
/// says otherwise: an upstream that stops answering must not collect an
/// unbounded pile of open connections and waiting clients. A local
/// deployment has no default cap: its engine's `max_waiting` queue bounds it.
pub const DEFAULT_PROVIDER_MAX_CONCURRENCY: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The public model name clients send.
    pub model: String,
    /// `fallback` (default), `weighted`, `least_latency`, `lowest_cost`, `learned`.
    pub strategy: Option<String>,
    pub seed: Option<u64>,
    pub sensitive_wait_ms: Option<u64>,
    /// Which of this model's requests the input guard scores ("every",
    /// "off"), instead of `[guard] score`.
    pub guard: Option<String>,
    #[serde(default)]
    pub reward: RewardSection,
    #[serde(default)]
    pub deployments: Vec<DeploymentSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSection {
    pub latency_scale_ms: Option<f64>,
    pub per_token_scale_ms: Option<f64>,
    pub cost_scale_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSection {
    /// Unique over all routes; shown in `x-sluice-deployment` and metrics.
    pub name: String,
    pub local: Option<String>,
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub priority: Option<u32>,
    pub weight: Option<f64>,
    pub price_input_per_1k: Option<f64>,
    pub price_output_per_1k: Option<f64>,
    /// Requests in flight at most; a provider deployment defaults to
    /// [`DEFAULT_PROVIDER_MAX_CONCURRENCY`], a local one to no cap.
    pub max_concurrency: Option<usize>,
    pub residency: Option<String>,
    pub max_queue_wait_ms: Option<f64>,
    pub min_free_kv_fraction: Option<f64>,
    pub resilience: Option<ResilienceConfig>,
    /// What it can do beyond plain chat (tools, response formats, ...);
    /// absent: the defaults of its kind ([`Capabilities::provider_default`]).
    pub capabilities: Option<Vec<String>>,
}

/// Checks the providers (unique names, sane resilience settings).
pub(super) fn check_providers(providers: &[ProviderConfig]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, p) in providers.iter().enumerate() {
        let name = p.name();
        if name.is_empty() || !names.insert(name.to_string()) {
            return Err(invalid(
                format!("providers[{i}].name"),
                format!("`{name}` is empty or used twice"),
            ));
        }
        p.resilience()
            .validate()
            .map_err(|m| invalid(format!("providers[{i}].resilience"), m))?;
    }
    Ok(())
}

pub(super) fn resolve_routes(
    routes: Vec<RouteSection>,
    providers: &[ProviderConfig],
    models: &[ModelConfig],
) -> Result<Vec<RouteSpec>, ConfigError> {
    let mut publics = HashSet::new();
    let mut deployment_names = HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for (i, r) in routes.into_iter().enumerate() {
        let RouteSection {
            model,
            strategy,
            seed,
            sensitive_wait_ms,
            guard,
            reward,
            deployments,
        } = r;
        let at = |field: &str| format!("routes[{i}].{field}");
        if model.is_empty() || !publics.insert(model.clone()) {
            return Err(invalid(
                at("model"),
                format!("`{model}` is empty or used twice"),
            ));
        }
        let strategy = match strategy.as_deref() {
            None => Strategy::Fallback,
            Some(s) => Strategy::parse(s).ok_or_else(|| {
                invalid(
                    at("strategy"),
                    format!(
                        "`{s}` is not one of fallback, weighted, least_latency, lowest_cost, learned"
                    ),
                )
            })?,
        };
        if deployments.is_empty() {
            return Err(invalid(
                at("deployments"),
                "a route needs at least one deployment",
            ));
        }
        let wait = sensitive_wait_ms.unwrap_or(DEFAULT_SENSITIVE_WAIT_MS);
        if wait > 60_000 {
            return Err(invalid(
                at("sensitive_wait_ms"),
                format!("{wait} is more than 60000"),
            ));
        }
        let reward = resolve_reward(&at("reward"), reward)?;
        let guard = guard
            .map(|g| GuardScoring::parse(&at("guard"), &g))
            .transpose()?;
        let mut specs = Vec::with_capacity(deployments.len());
        for (j, d) in deployments.into_iter().enumerate() {
            let key = format!("routes[{i}].deployments[{j}]");
            let spec = resolve_deployment(&key, d, providers, models)?;
            // Metrics and the outcome store are keyed by deployment name.
            if !deployment_names.insert(spec.settings.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("`{}` is used twice", spec.settings.name),
                ));
            }
            specs.push(spec);
        }
        out.push(RouteSpec {
            model,
            strategy,
            seed,
            sensitive_wait: Duration::from_millis(wait),
            guard,
            reward,
            deployments: specs,
        });
    }
    Ok(out)
}

fn resolve_reward(at: &str, r: RewardSection) -> Result<RewardScales, ConfigError> {
    let RewardSection {
        latency_scale_ms,
        per_token_scale_ms,
        cost_scale_usd,
    } = r;
    let d = RewardScales::default();
    let positive = |field: &str, v: Option<f64>, default: f64| match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        Some(x) => Err(invalid(
            format!("{at}.{field}"),
            format!("{x} must be a positive number"),
        )),
    };
    Ok(RewardScales {
        latency_scale_ms: positive("latency_scale_ms", latency_scale_ms, d.latency_scale_ms)?,
        per_token_scale_ms: positive(
            "per_token_scale_ms",
            per_token_scale_ms,
            d.per_token_scale_ms,
        )?,
        cost_scale_usd: positive("cost_scale_usd", cost_scale_usd, d.cost_scale_usd)?,
    })
}

fn resolve_deployment(
    key: &str,
    d: DeploymentSection,
    providers: &[ProviderConfig],
    models: &[ModelConfig],
) -> Result<DeploymentSpec, ConfigError> {
    let DeploymentSection {
        name,
        local,
        provider,
        upstream_model,
        priority,
        weight,
        price_input_per_1k,
        price_output_per_1k,
        max_concurrency,
        residency,
        max_queue_wait_ms,
        min_free_kv_fraction,
        resilience,
        capabilities,
    } = d;
    let at = |field: &str| format!("{key}.{field}");
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if !name_ok {
        return Err(invalid(
            at("name"),
            format!("`{name}` must be 1-128 characters of A-Z a-z 0-9 - _ . : /"),
        ));
    }
    let non_negative = |field: &str, v: Option<f64>, default: f64| match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Some(x) => Err(invalid(at(field), format!("{x} must be a number >= 0"))),
    };
    let price = Price {
        input_per_1k: non_negative("price_input_per_1k", price_input_per_1k, 0.0)?,
        output_per_1k: non_negative("price_output_per_1k", price_output_per_1k, 0.0)?,
    };
    let weight = non_negative("weight", weight, 1.0)?;
    if max_concurrency == Some(0) {
        return Err(invalid(
            at("max_concurrency"),
            "must be at least 1 (leave it out for the default)",
        ));
    }
    let mut default_capabilities = Capabilities::local_default();
    let (target, default_residency) = match (local, provider) {
        (Some(model), None) => {
            if !models.iter().any(|m| m.id == model) {
                return Err(invalid(
                    at("local"),
                    format!("no [[models]] entry has id `{model}`"),
                ));
            }
            if upstream_model.is_some() || resilience.is_some() {
                return Err(invalid(
                    at("upstream_model"),
                    "upstream_model and resilience are for provider deployments",
                ));
            }
            let fraction = non_negative(
                "min_free_kv_fraction",
                min_free_kv_fraction,
                DEFAULT_MIN_FREE_KV_FRACTION,
            )?;
            if fraction > 1.0 {
                return Err(invalid(
                    at("min_free_kv_fraction"),
                    format!("{fraction} is more than 1"),
                ));
            }
            let saturation = SaturationLimits {
                max_queue_wait_ms: non_negative(
                    "max_queue_wait_ms",
                    max_queue_wait_ms,
                    DEFAULT_MAX_QUEUE_WAIT_MS,
                )?,
                min_free_kv_fraction: fraction,
            };
            (TargetSpec::Local { model, saturation }, Residency::OnPrem)
        }
        (None, Some(provider)) => {
            let Some(provider_config) = providers.iter().find(|p| p.name() == provider) else {
                return Err(invalid(
                    at("provider"),
                    format!("no [[providers]] entry is named `{provider}`"),
                ));
            };
            default_capabilities = Capabilities::provider_default(provider_config);
            if max_queue_wait_ms.is_some() || min_free_kv_fraction.is_some() {
                return Err(invalid(
                    at("max_queue_wait_ms"),
                    "max_queue_wait_ms and min_free_kv_fraction are for local deployments",
                ));
            }
            let Some(upstream_model) = upstream_model.filter(|m| !m.is_empty()) else {
                return Err(invalid(
                    at("upstream_model"),
                    "a provider deployment needs the upstream's model name",
                ));
            };
            if let Some(r) = &resilience {
                r.validate().map_err(|m| invalid(at("resilience"), m))?;
            }
            (
                TargetSpec::Provider {
                    provider,
                    upstream_model,
                    resilience,
                },
                Residency::Cloud,
            )
        }
        (Some(_), Some(_)) => {
            return Err(invalid(at("local"), "give local or provider, not both"));
        }
        (None, None) => {
            return Err(invalid(
                at("local"),
                "give local = \"<model id>\" or provider = \"<name>\"",
            ));
        }
    };
    let max_concurrency = match target {
        TargetSpec::Provider { .. } => {
            Some(max_concurrency.unwrap_or(DEFAULT_PROVIDER_MAX_CONCURRENCY))
        }
        TargetSpec::Local { .. } => max_concurrency,
    };
    let residency = match residency.as_deref() {
        None => default_residency,
        Some(r) => Residency::parse(r).ok_or_else(|| {
            invalid(
                at("residency"),
                format!("`{r}` is not one of on_prem, cloud"),
            )
        })?,
    };
    let capabilities = match capabilities {
        None => default_capabilities,
        Some(names) => {
            Capabilities::parse_list(&names).map_err(|m| invalid(at("capabilities"), m))?
        }
    };
    Ok(DeploymentSpec {
        settings: DeploymentSettings {
            name,
            priority: priority.unwrap_or(0),
            weight,
            price,
            max_concurrency,
            residency,
            capabilities,
        },
        target,
    })
}

/// A route as resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// The public model name clients send.
    pub model: String,
    pub strategy: Strategy,
    /// Seeds the route's RNG (weighted and learned strategies), for
    /// reproducible routing; absent: seeded from the OS.
    pub seed: Option<u64>,
    /// How long a sensitive request waits for a saturated `on_prem`
    /// deployment before it gets 429.
    pub sensitive_wait: Duration,
    /// Which of this model's requests the input guard scores; `None`: `[guard] score`.
    pub guard: Option<GuardScoring>,
    pub reward: RewardScales,
    pub deployments: Vec<DeploymentSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    pub settings: DeploymentSettings,
    pub target: TargetSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    Local {
        model: String,
        saturation: SaturationLimits,
    },
    Provider {
        /// A `[[providers]]` name.
        provider: String,
        upstream_model: String,
        /// The provider's resilience settings unless the deployment has its own.
        resilience: Option<ResilienceConfig>,
    },
}

/// Where a deployment may send a request's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// On this machine or this organisation's network: allowed for sensitive requests.
    OnPrem,
    /// A third party's cloud: never for sensitive requests.
    Cloud,
}

impl Residency {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "on_prem" => Some(Self::OnPrem),
            "cloud" => Some(Self::Cloud),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnPrem => "on_prem",
            Self::Cloud => "cloud",
        }
    }
}

/// Price per 1k tokens, USD.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_1k: f64,
    pub output_per_1k: f64,
}

/// When a local engine counts as full (then the next deployment takes the request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaturationLimits {
    /// Full when the engine estimates a newcomer would wait longer than this
    /// for its first token.
    pub max_queue_wait_ms: f64,
    /// Full when less than this fraction of the KV-cache blocks is free.
    pub min_free_kv_fraction: f64,
}

/// A deployment's settings, as resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSettings {
    pub name: String,
    pub priority: u32,
    pub weight: f64,
    pub price: Price,
    /// Requests in flight at most; `None` is unlimited.
    pub max_concurrency: Option<usize>,
    pub residency: Residency,
    /// What it can do beyond plain chat; the router keeps requests that
    /// ask for more off it.
    pub capabilities: Capabilities,
}

/// What a unit of each penalty is worth (see the module's formula).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardScales {
    pub latency_scale_ms: f64,
    pub per_token_scale_ms: f64,
    pub cost_scale_usd: f64,
}

impl Default for RewardScales {
    fn default() -> Self {
        Self {
            latency_scale_ms: 1000.0,
            per_token_scale_ms: 100.0,
            cost_scale_usd: 0.01,
        }
    }
}

/// How a route orders its deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Lowest `priority` first.
    Fallback,
    /// Random, each deployment chosen first with probability proportional to its weight.
    Weighted,
    /// Lowest moving-average time to first token first; unmeasured ones first of all,
    /// so each gets measured.
    LeastLatency,
    /// Lowest price (input plus output price per 1k tokens) first.
    LowestCost,
    /// Thompson sampling over the recorded rewards (see [`super::bandit`]).
    Learned,
}

impl Strategy {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "fallback" => Self::Fallback,
            "weighted" => Self::Weighted,
            "least_latency" => Self::LeastLatency,
            "lowest_cost" => Self::LowestCost,
            "learned" => Self::Learned,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fallback => "fallback",
            Self::Weighted => "weighted",
            Self::LeastLatency => "least_latency",
            Self::LowestCost => "lowest_cost",
            Self::Learned => "learned",
        }
    }
}
