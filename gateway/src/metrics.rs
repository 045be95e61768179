//! `/metrics`: the process's metrics in Prometheus text format.
//!
//! Code everywhere records through the `metrics` crate's macros; this
//! module installs the one global Prometheus recorder (without an HTTP
//! listener of its own: the gateway's router serves `/metrics`), fixes the
//! histogram buckets and renders on request.
//!
//! Design choice: histograms get explicit buckets rather than the
//! exporter's default summaries: buckets aggregate across replicas in
//! Prometheus, and the gateway-overhead buckets start at 50 µs because the
//! figures that matter (the benchmark's added latency) are well under a
//! millisecond. The recorder is installed once per process (a second
//! `serve` in the same process, as in tests, reuses the first's handle).

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Gateway's own time per request: total minus the time spent waiting on the deployment.
pub const OVERHEAD_SECONDS: &str = "sluice_gateway_overhead_seconds";
/// Time to first token, per deployment.
pub const TTFT_SECONDS: &str = "sluice_ttft_seconds";

const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How often histogram samples are folded into their buckets (bounding the
/// memory they hold between scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder (once per process) and returns its handle;
/// `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(OVERHEAD_SECONDS.into()), OVERHEAD_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(TTFT_SECONDS.into()), TTFT_BUCKETS)
                });
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets refused; using summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics is empty");
                    None
                }
            }
        })
        .clone()
}

/// Folds histogram samples into buckets until shutdown.
pub async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_EVERY) => handle.run_upkeep(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// The Prometheus recorder's handle; `None` if another recorder was
/// installed first (then `/metrics` is empty).
#[derive(Clone)]
pub struct MetricsHandle(pub Option<PrometheusHandle>);

/// `GET /metrics`.
pub async fn render(State(MetricsHandle(handle)): State<MetricsHandle>) -> Response {
    let body = handle
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}
