//! `DELETE /admin/cache?tenant=…&model=…`: purges a tenant's and/or a
//! model's cache entries (in whichever backend is configured) and answers
//! `{"purged": <count>}`.
//!
//! Design choice: the admin key is its own secret (`[admin] key_env` or
//! `key_file`), never a tenant key, so no tenant can purge another's
//! entries; without an admin key the route is not mounted at all.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use std::sync::Arc;

use super::Cache;
use crate::config::Secret;
use crate::error::ApiError;

/// What the admin routes of the cache need.
#[derive(Clone)]
pub struct CacheAdmin {
    pub cache: Arc<Cache>,
    /// Without one the admin routes are not mounted.
    pub admin_key: Option<Arc<Secret>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    pub tenant: Option<String>,
    pub model: Option<String>,
}

pub async fn purge(
    State(state): State<CacheAdmin>,
    headers: HeaderMap,
    Query(q): Query<PurgeQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(admin) = &state.admin_key else {
        return Err(ApiError::Unauthorized("The admin API is not configured."));
    };
    crate::auth::require_admin(admin, &headers)?;
    let tenant = q.tenant.as_deref().filter(|t| !t.is_empty());
    let model = q.model.as_deref().filter(|m| !m.is_empty());
    if tenant.is_none() && model.is_none() {
        return Err(ApiError::invalid(
            "tenant",
            "give `tenant`, `model` or both, e.g. DELETE /admin/cache?tenant=team-a",
        ));
    }
    let purged = state
        .cache
        .purge(tenant, model)
        .await
        .map_err(|_| ApiError::StoreUnavailable("the cache store"))?;
    tracing::info!(tenant, model, purged, "cache purged");
    Ok(Json(json!({ "purged": purged })))
}
