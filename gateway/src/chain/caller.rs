//! [`Caller`]: who asks, as the auth stage left it in the request, and the
//! request headers the later stages read (sensitivity, cache control).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use tokio::time::Instant;

use std::sync::Arc;

use crate::auth::{Principal, Tenant};
use crate::error::ApiError;
use crate::sensitivity::{is_sensitive, TenantPolicy};
use crate::telemetry::Trace;

/// Who is calling, and how the request must be treated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub tenant: Tenant,
    pub policy: TenantPolicy,
    pub headers: HeaderMap,
    /// Its data must stay on `on_prem` deployments and out of the cache.
    pub sensitive: bool,
    /// Regulated (and so sensitive): cached only sealed and without PII,
    /// the audit fail-closed ([`crate::sensitivity`]).
    pub regulated: bool,
    /// When the handler started (for the gateway-overhead metric).
    pub started: Instant,
    /// The request's trace (off unless `[telemetry]` turns it on): the
    /// stages' spans hang under it.
    pub trace: Trace,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let started = Instant::now();
        // Every route that takes a `Caller` sits behind `auth::require_key`;
        // a missing tenant is a routing mistake, never an anonymous pass.
        let tenant = parts.extensions.get::<Tenant>().cloned().ok_or_else(|| {
            ApiError::Internal("a chain route is not behind the auth layer".into())
        })?;
        let policy = parts
            .extensions
            .get::<TenantPolicy>()
            .copied()
            .unwrap_or_default();
        let principal = parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("the auth layer left no principal".into()))?;
        Ok(Self {
            principal,
            sensitive: is_sensitive(&parts.headers, Some(&policy)),
            regulated: policy.regulated,
            tenant,
            policy,
            headers: parts.headers.clone(),
            started,
            trace: parts.extensions.get::<Trace>().cloned().unwrap_or_default(),
        })
    }
}
