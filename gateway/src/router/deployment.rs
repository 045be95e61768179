//! One deployment of a public model: where it runs (the local engine or an
//! upstream provider), what it costs, where the data goes, and its live
//! state (requests in flight, its breaker, its metrics handles).
//!
//! Design choice: the concurrency cap is a counter taken with a
//! compare-and-swap and released by a guard the answer owns, not a
//! semaphore: the router never queues on a full deployment, it moves on to
//! the next one, so all it needs is "is there room, and take it" in one step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use metrics::{Counter, Gauge, Histogram};
use sluice_runtime::{LoadSnapshot, Usage};

use crate::config::{DeploymentSettings, Price, SaturationLimits};
use crate::providers::{BreakerState, Provider, Resilience};

impl Price {
    /// What a request with this usage cost. Cached prompt tokens are billed
    /// like the others: providers differ on discounts, and the price table
    /// should not promise one it cannot know.
    pub fn cost(&self, usage: &Usage) -> f64 {
        usage.prompt_tokens as f64 / 1000.0 * self.input_per_1k
            + usage.completion_tokens as f64 / 1000.0 * self.output_per_1k
    }

    /// Input plus output price: what `lowest_cost` compares.
    pub fn unit(&self) -> f64 {
        self.input_per_1k + self.output_per_1k
    }
}

impl SaturationLimits {
    /// Never full by these signals (the engine's own queue limit still answers 429).
    pub const NONE: Self = Self {
        max_queue_wait_ms: f64::INFINITY,
        min_free_kv_fraction: 0.0,
    };

    pub fn is_saturated(&self, load: &LoadSnapshot) -> bool {
        if load.estimated_queue_wait_ms > self.max_queue_wait_ms {
            return true;
        }
        if load.kv_blocks_total == 0 {
            return false;
        }
        let free = load.kv_blocks_free as f64 / load.kv_blocks_total as f64;
        free < self.min_free_kv_fraction
    }
}

/// What serves a deployment.
pub enum Target {
    /// A model of this process's engine, by its `[[models]]` id.
    Local {
        model: String,
        saturation: SaturationLimits,
    },
    /// An upstream, through this deployment's own resilience state.
    Provider {
        provider: Arc<dyn Provider>,
        upstream_model: String,
        resilience: Arc<Resilience>,
    },
}

/// Per-deployment metric handles, registered once so that the request path
/// does not build label sets.
pub struct DeploymentMetrics {
    pub success: Counter,
    pub failure: Counter,
    pub cancelled: Counter,
    /// Attempts that failed before any byte reached the client and handed
    /// the request on to the next deployment.
    pub failover: Counter,
    pub saturated: Counter,
    pub ttft: Histogram,
    pub cost_usd: Gauge,
    /// The circuit breaker's state (0 closed, 1 half-open, 2 open), set
    /// when `/metrics` is read; a local deployment has no breaker and no
    /// series.
    circuit: Option<Gauge>,
}

impl DeploymentMetrics {
    fn new(route: &str, deployment: &str, has_breaker: bool) -> Self {
        let outcome = |outcome: &'static str| {
            metrics::counter!("sluice_requests_total",
                "model" => route.to_string(), "deployment" => deployment.to_string(), "outcome" => outcome)
        };
        Self {
            success: outcome("success"),
            failure: outcome("failure"),
            cancelled: outcome("cancelled"),
            failover: metrics::counter!("sluice_failovers_total",
                "model" => route.to_string(), "deployment" => deployment.to_string()),
            saturated: metrics::counter!("sluice_saturated_skips_total",
                "model" => route.to_string(), "deployment" => deployment.to_string()),
            ttft: metrics::histogram!("sluice_ttft_seconds",
                "model" => route.to_string(), "deployment" => deployment.to_string()),
            cost_usd: metrics::gauge!("sluice_cost_usd",
                "model" => route.to_string(), "deployment" => deployment.to_string()),
            circuit: has_breaker.then(|| {
                metrics::gauge!(crate::metrics::catalog::CIRCUIT_STATE,
                    "model" => route.to_string(), "deployment" => deployment.to_string())
            }),
        }
    }
}

/// One deployment with its live state.
pub struct Deployment {
    pub name: Arc<str>,
    pub settings: DeploymentSettings,
    pub target: Target,
    pub metrics: DeploymentMetrics,
    /// The `x-sluice-deployment` header value, made once.
    header: HeaderValue,
    in_flight: AtomicUsize,
}

impl Deployment {
    pub fn new(route: &str, settings: DeploymentSettings, target: Target) -> Self {
        let header = HeaderValue::from_str(&settings.name)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
        Self {
            name: Arc::from(settings.name.as_str()),
            metrics: DeploymentMetrics::new(
                route,
                &settings.name,
                matches!(target, Target::Provider { .. }),
            ),
            header,
            in_flight: AtomicUsize::new(0),
            settings,
            target,
        }
    }

    /// Takes a concurrency slot; `None` when the deployment is at its cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let cap = self.settings.max_concurrency.unwrap_or(usize::MAX);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether its breaker rejects calls right now (open and still cooling down).
    pub fn circuit_open(&self) -> bool {
        match &self.target {
            Target::Provider { resilience, .. } => {
                matches!(resilience.breaker().state(), BreakerState::Open)
            }
            Target::Local { .. } => false,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.target, Target::Local { .. })
    }

    /// Sets the circuit-state gauge from the breaker as it is now (a
    /// cool-down ends without an event, so this runs when `/metrics` is read).
    pub fn refresh_circuit_gauge(&self) {
        let (Some(gauge), Target::Provider { resilience, .. }) =
            (&self.metrics.circuit, &self.target)
        else {
            return;
        };
        gauge.set(match resilience.breaker().state() {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        });
    }

    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// A taken concurrency slot; given back when dropped (with the answer).
pub struct InFlight(Arc<Deployment>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which deployment answered, and what that cost.
#[derive(Clone)]
pub struct Provenance {
    pub deployment: Arc<Deployment>,
}

/// The response headers naming the deployment and the cost.
pub const DEPLOYMENT_HEADER: &str = "x-sluice-deployment";
pub const COST_HEADER: &str = "x-sluice-cost";

impl Provenance {
    pub fn cost(&self, usage: &Usage) -> f64 {
        self.deployment.settings.price.cost(usage)
    }

    /// Adds `x-sluice-deployment`, and `x-sluice-cost` when the usage is
    /// known. A stream's headers leave before its usage exists, so a stream
    /// carries only the deployment; its cost goes to the log and metrics.
    pub fn stamp(&self, headers: &mut HeaderMap, usage: Option<&Usage>) {
        headers.insert(DEPLOYMENT_HEADER, self.deployment.header().clone());
        if let Some(usage) = usage {
            if let Ok(v) = HeaderValue::from_str(&format_cost(self.cost(usage))) {
                headers.insert(COST_HEADER, v);
            }
        }
    }
}

/// USD with enough decimals for a fraction of a cent (`0.000123`).
pub fn format_cost(usd: f64) -> String {
    format!("{:.6}", if usd.is_finite() { usd.max(0.0) } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Residency;

    fn load(wait_ms: f64, free: usize, total: usize) -> LoadSnapshot {
        LoadSnapshot {
            estimated_queue_wait_ms: wait_ms,
            kv_blocks_free: free,
            kv_blocks_total: total,
            ..LoadSnapshot::default()
        }
    }

    #[test]
    fn saturated_on_queue_wait_or_scarce_kv_blocks() {
        let limits = SaturationLimits {
            max_queue_wait_ms: 100.0,
            min_free_kv_fraction: 0.1,
        };
        assert!(!limits.is_saturated(&load(50.0, 50, 100)));
        assert!(limits.is_saturated(&load(150.0, 50, 100)));
        assert!(limits.is_saturated(&load(0.0, 9, 100)));
        assert!(!limits.is_saturated(&load(0.0, 10, 100)));
        assert!(!SaturationLimits::NONE.is_saturated(&load(1e9, 0, 100)));
    }

    #[test]
    fn cost_follows_the_price_table() {
        let price = Price {
            input_per_1k: 0.5,
            output_per_1k: 1.5,
        };
        let usage = Usage {
            prompt_tokens: 200,
            completion_tokens: 10,
            ..Usage::default()
        };
        assert!((price.cost(&usage) - 0.115).abs() < 1e-12);
        assert_eq!(format_cost(0.000_123_4), "0.000123");
        assert_eq!(format_cost(f64::NAN), "0.000000");
    }

    fn local(cap: Option<usize>) -> Arc<Deployment> {
        Arc::new(Deployment::new(
            "m",
            DeploymentSettings {
                name: "d".into(),
                priority: 0,
                weight: 1.0,
                price: Price::default(),
                max_concurrency: cap,
                residency: Residency::OnPrem,
                capabilities: crate::config::Capabilities::local_default(),
            },
            Target::Local {
                model: "m".into(),
                saturation: SaturationLimits::NONE,
            },
        ))
    }

    #[test]
    fn concurrency_cap_refuses_past_the_cap_and_frees_on_drop() {
        let d = local(Some(2));
        let a = d.try_acquire().unwrap();
        let _b = d.try_acquire().unwrap();
        assert!(d.try_acquire().is_none());
        drop(a);
        assert_eq!(d.in_flight(), 1);
        assert!(d.try_acquire().is_some());
        assert!(local(None).try_acquire().is_some());
    }
}
