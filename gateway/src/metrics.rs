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
//! What is exported is listed in [`catalog`] (names, types, help, labels,
//! buckets; the engine's under vLLM's names) and documented for operators
//! in `deploy/METRICS.md`; [`engine`] records a local engine's figures.
//! Gauges of state that changes without an event (a circuit breaker's
//! cool-down ending) are refreshed when `/metrics` is read ([`Refresh`]).
//!
//! Design choice: histograms get explicit buckets rather than the
//! exporter's default summaries: buckets aggregate across replicas in
//! Prometheus, and the gateway-overhead buckets start at 50 µs because the
//! figures that matter (the benchmark's added latency) are well under a
//! millisecond. The recorder is installed once per process (a second
//! `serve` in the same process, as in tests, reuses the first's handle).

pub mod catalog;
pub mod engine;

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

pub use catalog::{OVERHEAD_SECONDS, STREAM_ANALYSIS_SECONDS};

/// How often histogram samples are folded into their buckets (bounding the
/// memory they hold between scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder (once per process) and returns its handle;
/// `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = catalog::ALL
                .iter()
                .filter(|m| !m.buckets.is_empty())
                .try_fold(PrometheusBuilder::new(), |b, m| {
                    b.set_buckets_for_metric(Matcher::Full(m.name.into()), m.buckets)
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
                Ok(()) => {
                    catalog::describe_all();
                    catalog::register_known_series();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics is empty");
                    None
                }
            }
        })
        .clone()
}

/// Brings state gauges up to date just before `/metrics` renders.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

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
    refresh: Option<Refresh>,
}

/// The `/metrics` route for the API listener, or `None` when this
/// exposure does not serve it there.
pub fn api_route<S>(
    exposure: &Exposure,
    handle: Option<PrometheusHandle>,
    admin_key: Option<Arc<Secret>>,
    refresh: Option<Refresh>,
) -> Option<Router<S>> {
    let endpoint = match exposure {
        Exposure::OwnListener(_) | Exposure::Hidden => return None,
        Exposure::Open => Endpoint {
            handle,
            admin_key: None,
            refresh,
        },
        // `decide` only picks `AdminKey` when there is one; without it the
        // route stays unmounted rather than open.
        Exposure::AdminKey => Endpoint {
            handle,
            admin_key: Some(admin_key?),
            refresh,
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
    refresh: Option<Refresh>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(Endpoint {
            handle,
            admin_key: None,
            refresh,
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
    if let Some(refresh) = &endpoint.refresh {
        refresh();
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
        let mounted =
            |e: Exposure, k: Option<Arc<Secret>>| api_route::<()>(&e, None, k, None).is_some();
        assert!(!mounted(Exposure::OwnListener(addr), key.clone()));
        assert!(!mounted(Exposure::Hidden, key.clone()));
        assert!(mounted(Exposure::AdminKey, key.clone()));
        assert!(!mounted(Exposure::AdminKey, None));
        assert!(mounted(Exposure::Open, None));
    }
}
