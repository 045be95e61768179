//! What the HTTP handlers may read, and the slices of it each one takes
//! (axum's `FromRef`): the chain for the generation APIs, the cache and
//! admin key for the cache's admin route. The
//! stages of [`crate::chain`] never see this; the handlers hand each one
//! what it needs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::cache::admin::CacheAdmin;
use crate::cache::Cache;
use crate::chain::Chain;
use crate::config::Secret;
use crate::encoders::EncoderRegistry;
use crate::guard::Guard;
use crate::registry::Registry;
use crate::router::Router as ModelRouter;
use crate::store::Store;

/// The request body limit, read by the JSON extractor for its 413 message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// What every handler may read: one pointer, since axum clones the state
/// into every request's handler and middleware (cloning the parts one by
/// one was 2.4% of a proxied request's CPU).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    /// The request path of the generation APIs.
    pub chain: Arc<Chain>,
    pub registry: Arc<Registry>,
    pub router: Arc<ModelRouter>,
    /// The Prometheus recorder's handle; `None` if another recorder was installed first.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Whether and how the API listener serves `/metrics`.
    pub metrics_exposure: crate::metrics::Exposure,
    /// In-process encoders (embeddings, classifiers), loaded in the background.
    pub encoders: Arc<EncoderRegistry>,
    /// The input guard; `None` when it is off.
    pub guard: Option<Arc<Guard>>,
    /// Config keys, virtual keys, OIDC tokens, and the admin key.
    pub auth: Arc<Authenticator>,
    /// The durable store (keys, spend, audit).
    pub store: Store,
    pub audit: Audit,
    /// Virtual keys and teams (checked by `auth`, changed by the admin API).
    pub keys: Arc<crate::keys::VirtualKeys>,
    pub cache: Arc<Cache>,
    /// The admin API's key; without one the admin routes do not exist.
    pub admin_key: Option<Arc<Secret>>,
    pub body_limit: BodyLimit,
    pub request_timeout: Duration,
    pub shutdown: CancellationToken,
    /// `[server] max_in_flight`, taken around every `/v1` request.
    pub in_flight: crate::inflight::InFlightLimit,
    /// Budgets, for `/admin/budgets` (the chain holds the same).
    pub budgets: Arc<crate::budget::Budgets>,
    /// Stored responses and conversations (the durable store, Redis in front).
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Signs and checks the admin console's session cookies.
    pub console: crate::console::SessionKeys,
    /// Traces (`[telemetry]`); off by default.
    pub telemetry: crate::telemetry::Telemetry,
}

impl FromRef<AppState> for BodyLimit {
    fn from_ref(state: &AppState) -> Self {
        state.body_limit
    }
}

impl FromRef<AppState> for Arc<Chain> {
    fn from_ref(state: &AppState) -> Self {
        state.chain.clone()
    }
}

impl FromRef<AppState> for crate::console::ConsoleState {
    fn from_ref(state: &AppState) -> Self {
        Self {
            sessions: state.console.clone(),
            auth: state.auth.clone(),
            keys: state.keys.clone(),
            audit: state.audit.clone(),
        }
    }
}

impl FromRef<AppState> for CacheAdmin {
    fn from_ref(state: &AppState) -> Self {
        CacheAdmin {
            cache: state.cache.clone(),
            admin_key: state.admin_key.clone(),
        }
    }
}
