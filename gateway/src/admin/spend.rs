//! `/admin/spend`: spend grouped by key, team, model or deployment, and
//! `/admin/spend/savings`: what cache hits and local requests saved at the
//! reference cloud price. Read access: admin and auditor see everything; a
//! team admin sees its own team only (its reports are filtered to it).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AdminCaller;
use crate::auth::{Access, Role};
use crate::error::ApiError;
use crate::spend::report::{self, GroupBy, Scope};
use crate::state::AppState;

/// The default range: the last 30 days.
const DEFAULT_RANGE_MS: i64 = 30 * 24 * 3600 * 1000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/spend", get(spend))
        .route("/admin/spend/savings", get(savings))
        .route("/admin/spend/series", get(series))
}

pub(super) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

async fn spend(
    caller: AdminCaller,
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let group_by = match params.get("group_by").map(String::as_str) {
        None => GroupBy::Model,
        Some(text) => GroupBy::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "group_by",
                format!("`{text}` is not a grouping: use key, team, model or deployment"),
            )
        })?,
    };
    let scope = scope(&caller, &params)?;
    let rows = report::by_group(&state.store, group_by, &scope)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "object": "list",
        "group_by": params.get("group_by").map_or("model", String::as_str),
        "from": scope.from_ms,
        "to": scope.to_ms,
        "team": scope.team,
        "data": rows,
    })))
}

async fn savings(
    caller: AdminCaller,
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let scope = scope(&caller, &params)?;
    let savings = report::savings(&state.store, &scope)
        .await
        .map_err(store_error)?;
    let mut body = serde_json::to_value(savings).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(object) = body.as_object_mut() {
        object.insert("from".into(), scope.from_ms.into());
        object.insert("to".into(), scope.to_ms.into());
        object.insert("team".into(), scope.team.clone().into());
    }
    Ok(Json(body))
}

/// `/admin/spend/series?bucket=minute|hour|day&from=&to=`: requests,
/// tokens, cost and reference cost per bucket (the console's charts).
async fn series(
    caller: AdminCaller,
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let bucket = params.get("bucket").map_or("day", String::as_str);
    let bucket_ms = match bucket {
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        other => {
            return Err(ApiError::invalid(
                "bucket",
                format!("`{other}` is not a bucket: use minute, hour or day"),
            ))
        }
    };
    let scope = scope(&caller, &params)?;
    // Bounded: at most 1,000 buckets (a year of days, 41 days of hours).
    if (scope.to_ms - scope.from_ms) / bucket_ms > 1_000 {
        return Err(ApiError::invalid(
            "bucket",
            format!("the range holds more than 1,000 buckets of a {bucket}: narrow it or use a larger bucket"),
        ));
    }
    let data = crate::spend::stats::series(&state.store, &scope, bucket_ms)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "object": "list",
        "bucket": bucket,
        "bucket_ms": bucket_ms,
        "from": scope.from_ms,
        "to": scope.to_ms,
        "team": scope.team,
        "data": data,
    })))
}

pub(super) fn query(params: Params) -> Result<HashMap<String, String>, ApiError> {
    params
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_body(format!("The query string is malformed: {e}")))
}

/// The range and team a caller may read: `team` as asked, or, for a team
/// admin who reads nothing else, its own team.
pub(super) fn scope(
    caller: &AdminCaller,
    params: &HashMap<String, String>,
) -> Result<Scope, ApiError> {
    let now = crate::util::unix_now_ms();
    let to_ms = match params.get("to") {
        Some(t) => parse_time("to", t)?,
        None => now,
    };
    let from_ms = match params.get("from") {
        Some(t) => parse_time("from", t)?,
        None => to_ms.saturating_sub(DEFAULT_RANGE_MS),
    };
    if from_ms > to_ms {
        return Err(ApiError::invalid("from", "`from` is after `to`"));
    }
    let roles = caller.0.roles;
    let team_only = !roles.contains(Role::Admin) && !roles.contains(Role::Auditor);
    let team = match params.get("team") {
        Some(team) => Some(team.clone()),
        None if team_only => caller.0.team.as_deref().map(str::to_string),
        None => None,
    };
    caller.allow(Access::Read {
        team: team.as_deref(),
    })?;
    Ok(Scope {
        from_ms,
        to_ms,
        team,
    })
}

/// Milliseconds since the epoch, or RFC 3339.
pub(super) fn parse_time(param: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            ApiError::invalid(
                param,
                format!(
                    "`{text}` is not a time: give milliseconds since the epoch or RFC 3339 \
                     (2026-01-31T00:00:00Z)"
                ),
            )
        })
}

pub(super) fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "an admin report failed");
    ApiError::StoreUnavailable("The store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_milliseconds_or_rfc3339() {
        assert_eq!(
            parse_time("from", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("from", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("to", "yesterday").is_err());
    }

    fn caller(roles: &[Role], team: Option<&str>) -> AdminCaller {
        let mut p = crate::auth::Principal::anonymous();
        p.roles = crate::auth::Roles::of(roles);
        p.team = team.map(std::sync::Arc::from);
        AdminCaller(p)
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_team_admin_reads_its_own_team_only() {
        let team_admin = caller(&[Role::TeamAdmin], Some("red"));
        let s = scope(&team_admin, &params(&[("from", "10"), ("to", "20")])).unwrap();
        assert_eq!(
            s,
            Scope {
                from_ms: 10,
                to_ms: 20,
                team: Some("red".into())
            }
        );
        let err = scope(&team_admin, &params(&[("team", "blue")])).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);

        let auditor = caller(&[Role::Auditor], None);
        assert_eq!(scope(&auditor, &params(&[])).unwrap().team, None);
        let user = caller(&[Role::User], Some("red"));
        assert!(scope(&user, &params(&[])).is_err());
        let err = scope(&auditor, &params(&[("from", "30"), ("to", "20")])).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
    }
}
