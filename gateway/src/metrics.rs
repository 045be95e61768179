//! `/metrics`: the process's metrics in Prometheus text format.
//!
//! Code everywhere records through the `metrics` crate's macros; this
//! module installs the one global Prometheus recorder, fixes the histogram
//! buckets and renders on request.
//!
//! Where `/metrics` is served ([`Exposure`]): on its own listener when
//! `[server] metrics_listen` is set (and then not on the API listener);
//! otherwise on the API listener behind the admin key when there is one;
//! with neither, on the API listener without a key only when the API
//! itself takes none (no `[[auth.keys]]`), so the metrics are never more
//! exposed than the API. With API keys and no admin key it is not served
//! at all: tenant keys must not read every tenant's traffic.
//!
//! Design choice: histograms get explicit buckets rather than the
//! exporter's default summaries: buckets aggregate across replicas in
//! Prometheus, and the gateway-overhead buckets start at 50 µs because the
//! figures that matter (the benchmark's added latency) are well under a
//! millisecond. The recorder is installed once per process (a second
//! `serve` in the same process, as in tests, reuses the first's handle).

use std::sync::OnceLock;
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::error::ApiError;

/// Gateway's own time per request: total minus the time spent waiting on the deployment.
pub const OVERHEAD_SECONDS: &str = "sluice_gateway_overhead_seconds";
/// Time to first token, per deployment.
pub const TTFT_SECONDS: &str = "sluice_ttft_seconds";

/// The stream analysers' time per chunk (every step of an analysed answer).
pub const STREAM_ANALYSIS_SECONDS: &str = "sluice_stream_analysis_seconds";

const STREAM_ANALYSIS_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005,
];
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
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STREAM_ANALYSIS_SECONDS.into()),
                        STREAM_ANALYSIS_BUCKETS,
                    )
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

/// Where `/metrics` is served, decided once at start from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// On `[server] metrics_listen` only.
    OwnListener(SocketAddr),
    /// On the API listener, with `Authorization: Bearer <admin key>`.
    AdminKey,
    /// On the API listener without a key: the API itself takes none.
    Open,
    /// Nowhere (API keys but no admin key and no metrics listener).
    Hidden,
}

impl Exposure {
    pub fn decide(
        metrics_listen: Option<SocketAddr>,
        has_admin_key: bool,
        api_is_open: bool,
    ) -> Self {
        match (metrics_listen, has_admin_key, api_is_open) {
            (Some(addr), _, _) => Self::OwnListener(addr),
            (None, true, _) => Self::AdminKey,
            (None, false, true) => Self::Open,
            (None, false, false) => Self::Hidden,
        }
    }
}

/// What the `/metrics` handler needs: the recorder's handle and, on the
/// API listener, the admin key it must be shown.
#[derive(Clone)]
pub struct Endpoint {
    /// `None` if another recorder was installed first (an empty page).
    handle: Option<PrometheusHandle>,
    /// `Some`: requests must carry this key.
    admin_key: Option<Arc<Secret>>,
}

/// The `/metrics` route for the API listener, or `None` when this
/// exposure does not serve it there.
pub fn api_route<S>(
    exposure: &Exposure,
    handle: Option<PrometheusHandle>,
    admin_key: Option<Arc<Secret>>,
) -> Option<Router<S>> {
    let endpoint = match exposure {
        Exposure::OwnListener(_) | Exposure::Hidden => return None,
        Exposure::Open => Endpoint {
            handle,
            admin_key: None,
        },
        // `decide` only picks `AdminKey` when there is one; without it the
        // route stays unmounted rather than open.
        Exposure::AdminKey => Endpoint {
            handle,
            admin_key: Some(admin_key?),
        },
    };
    Some(
        Router::new()
            .route("/metrics", get(render))
            .with_state(endpoint),
    )
}

/// Serves `/metrics` (and nothing else) on its own listener until
/// shutdown. The address is the operator's access control, as with any
/// Prometheus target: no key is asked for.
pub async fn serve_own_listener(
    listener: TcpListener,
    handle: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(Endpoint {
            handle,
            admin_key: None,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// `GET /metrics`.
async fn render(
    State(endpoint): State<Endpoint>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(admin) = &endpoint.admin_key {
        crate::auth::require_admin(admin, &headers)?;
    }
    let body = endpoint
        .handle
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_never_more_exposed_than_the_api() {
        let addr: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(
            Exposure::decide(Some(addr), true, false),
            Exposure::OwnListener(addr)
        );
        assert_eq!(
            Exposure::decide(Some(addr), false, true),
            Exposure::OwnListener(addr)
        );
        assert_eq!(Exposure::decide(None, true, false), Exposure::AdminKey);
        assert_eq!(Exposure::decide(None, true, true), Exposure::AdminKey);
        assert_eq!(Exposure::decide(None, false, true), Exposure::Open);
        assert_eq!(Exposure::decide(None, false, false), Exposure::Hidden);
    }

    #[test]
    fn the_api_listener_mounts_metrics_only_where_decided() {
        let key = Some(Arc::new(Secret::new("admin-key-0123456789".into())));
        let addr: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let mounted = |e: Exposure, k: Option<Arc<Secret>>| api_route::<()>(&e, None, k).is_some();
        assert!(!mounted(Exposure::OwnListener(addr), key.clone()));
        assert!(!mounted(Exposure::Hidden, key.clone()));
        assert!(mounted(Exposure::AdminKey, key.clone()));
        assert!(!mounted(Exposure::AdminKey, None));
        assert!(mounted(Exposure::Open, None));
    }
}
