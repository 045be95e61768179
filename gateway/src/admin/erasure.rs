//! Erasure: `DELETE /admin/users/{id}/data` (optionally `?tenant=`) and
//! `DELETE /admin/tenants/{id}/data` remove the sessions (stored responses
//! and conversations) from the durable store and from Redis, and the
//! semantic cache's entries of every tenant concerned; one audit event
//! says who erased what, and how much.
//!
//! Design choice: cache entries are shared by a tenant's callers and do
//! not record who asked, so erasing a user purges the whole cache of each
//! tenant the user had sessions in (or the one named). Over-erasing a
//! cache costs warmth; leaving a user's text in it would break the promise.
//! Only an admin erases (a team admin's keys are not the whole user).

use std::collections::BTreeSet;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::delete;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminCaller, AdminError};
use crate::audit::actions;
use crate::auth::Access;
use crate::error::ApiError;
use crate::sessions::{Erase, Removed, SessionStore};
use crate::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users/{id}/data", delete(erase_user))
        .route("/admin/tenants/{id}/data", delete(erase_tenant))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserScope {
    tenant: Option<String>,
}

async fn erase_user(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(user): Path<String>,
    scope: Result<Query<UserScope>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(scope) = scope
        .map_err(|e| ApiError::invalid_body(format!("bad query string: {}", e.body_text())))?;
    let target = format!("user:{user}");
    caller.permit(&state.audit, Access::Write { team: None }, &target)?;
    let tenant = scope.tenant.as_deref().filter(|t| !t.is_empty());
    let removed = state
        .sessions
        .erase(Erase::User {
            tenant,
            user: &user,
        })
        .await
        .map_err(|e| e.to_api("Session"))?;
    let mut tenants: BTreeSet<String> = removed.iter().map(|r| r.tenant.clone()).collect();
    tenants.extend(tenant.map(String::from));
    let cache = purge_caches(&state, &tenants).await?;
    Ok(Json(erased(&state, &caller, &target, &removed, cache)))
}

async fn erase_tenant(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let target = format!("tenant:{tenant}");
    caller.permit(&state.audit, Access::Write { team: None }, &target)?;
    let removed = state
        .sessions
        .erase(Erase::Tenant(&tenant))
        .await
        .map_err(|e| e.to_api("Session"))?;
    let cache = purge_caches(&state, &BTreeSet::from([tenant])).await?;
    Ok(Json(erased(&state, &caller, &target, &removed, cache)))
}

async fn purge_caches(state: &AppState, tenants: &BTreeSet<String>) -> Result<usize, ApiError> {
    let mut purged = 0;
    for tenant in tenants {
        purged += state
            .cache
            .purge(Some(tenant), None)
            .await
            .map_err(|_| ApiError::StoreUnavailable("The cache store"))?;
    }
    Ok(purged)
}

/// The audit event and the answer.
fn erased(
    state: &AppState,
    caller: &AdminCaller,
    target: &str,
    removed: &[Removed],
    cache_entries: usize,
) -> Value {
    caller.changed(
        &state.audit,
        actions::DATA_ERASED,
        target,
        &format!("sessions={}; cache_entries={cache_entries}", removed.len()),
    );
    json!({
        "object": "erasure",
        "target": target,
        "sessions_deleted": removed.len(),
        "cache_entries_deleted": cache_entries,
    })
}
