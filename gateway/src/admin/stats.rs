//! `/admin/stats`: the figures the console's overview, cache and guard, and
//! engine pages show, as JSON: traffic over a recent window (requests/s,
//! latency percentiles, cache hit rate) and since midnight UTC (spend),
//! a per-minute series of the last hour, the cache's share per model, the
//! guard's and the limits' decisions today, and each model's engine state
//! (KV blocks, running and waiting sequences).
//!
//! Traffic comes from the spend log (every instance's requests), decisions
//! from the audit log, engine state from this process's registry: the
//! records the gateway already keeps, never its Prometheus text.
//!
//! `/admin/audit`: the audit log, filtered and paged, for admins and
//! auditors only (it spans every team and tenant).

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::spend::{parse_time, query, scope, store_error, Params};
use super::AdminCaller;
use crate::audit::actions;
use crate::audit::query::{self as audit_query, AuditFilter};
use crate::auth::Access;
use crate::error::ApiError;
use crate::spend::stats;
use crate::state::AppState;

/// The recent window's default and largest length.
const DEFAULT_WINDOW_S: i64 = 300;
const MAX_WINDOW_S: i64 = 86_400;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The decisions the guard page counts: the input defence, the guard
/// classifier, PII, stream stops, and limit and budget refusals.
const DECISIONS: [&str; 6] = [
    actions::DEFENCE_DECISION,
    actions::GUARD_DECISION,
    actions::PII_DECISION,
    actions::STREAM_STOP,
    actions::LIMIT_REFUSED,
    actions::BUDGET_REFUSED,
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/stats", get(overview))
        .route("/admin/audit", get(audit))
}

/// `params` with `from` and `to` set to `[from_ms, to_ms)` (a team, if
/// given, is kept for [`scope`] to check).
fn range(params: &HashMap<String, String>, from_ms: i64, to_ms: i64) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = params
        .get("team")
        .map(|t| ("team".to_string(), t.clone()))
        .into_iter()
        .collect();
    out.insert("from".into(), from_ms.to_string());
    out.insert("to".into(), to_ms.to_string());
    out
}

async fn overview(
    caller: AdminCaller,
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let window_s = match params.get("window") {
        None => DEFAULT_WINDOW_S,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|s| (1..=MAX_WINDOW_S).contains(s))
            .ok_or_else(|| {
                ApiError::invalid(
                    "window",
                    format!("`{text}` is not a window: give seconds, 1 to {MAX_WINDOW_S}"),
                )
            })?,
    };
    let now = crate::util::unix_now_ms();
    let recent = scope(&caller, &range(&params, now - window_s * 1000, now))?;
    let midnight = now - now.rem_euclid(DAY_MS);
    let today = scope(&caller, &range(&params, midnight, now))?;
    let last_hour = scope(&caller, &range(&params, now - HOUR_MS, now))?;
    let store = &state.store;
    let traffic = stats::traffic(store, &recent).await.map_err(store_error)?;
    let today_traffic = stats::traffic(store, &today).await.map_err(store_error)?;
    let per_minute = stats::series(store, &last_hour, 60_000)
        .await
        .map_err(store_error)?;
    let cache_by_model = stats::cache_by_model(store, &today)
        .await
        .map_err(store_error)?;
    // The audit log spans every team: a team admin sees no decisions.
    let decisions = if caller.sees_everything() {
        let counts = audit_query::outcomes(store, &DECISIONS, midnight, now + 1)
            .await
            .map_err(store_error)?;
        Some(counts)
    } else {
        None
    };
    let (entries, bytes) = state.cache.usage();
    let cache = state.cache.settings();
    Ok(Json(json!({
        "object": "stats",
        "now": now,
        "team": recent.team,
        "window_seconds": window_s,
        "recent": traffic,
        "today": { "from": midnight, "traffic": today_traffic },
        "per_minute": per_minute,
        "cache": {
            "enabled": cache.enabled,
            "semantic": cache.semantic,
            "backend": if state.cache.redis().is_some() { "redis" } else { "memory" },
            "entries_in_process": entries,
            "bytes_in_process": bytes,
            "by_model_today": cache_by_model,
        },
        "decisions_today": decisions,
        "guard": { "enabled": state.guard.is_some() },
        "models": state.registry.status(),
        "encoders": state.encoders.status(),
    })))
}

async fn audit(
    caller: AdminCaller,
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    caller.permit(&state.audit, Access::Read { team: None }, "audit")?;
    let text = |name: &str| {
        params
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let number = |name: &'static str| -> Result<Option<i64>, ApiError> {
        match text(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::invalid(name, format!("`{v}` is not a whole number"))),
        }
    };
    let time = |name: &'static str| -> Result<Option<i64>, ApiError> {
        text(name).map(|v| parse_time(name, &v)).transpose()
    };
    let limit = number("limit")?.unwrap_or(100);
    if !(1..=audit_query::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("`limit` must be 1 to {}", audit_query::MAX_PAGE),
        ));
    }
    let filter = AuditFilter {
        action: text("action"),
        actor: text("actor"),
        outcome: text("outcome"),
        target: text("target"),
        from_ms: time("from")?,
        to_ms: time("to")?,
        before_seq: number("before")?,
        limit,
    };
    let records = audit_query::list(&state.store, &filter)
        .await
        .map_err(store_error)?;
    // The next page starts below the oldest record of a full one.
    let next = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({
        "object": "list",
        "data": records,
        "next_before": next,
    })))
}
