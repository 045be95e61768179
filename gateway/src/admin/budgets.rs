//! `/admin/budgets`: create or replace (`POST`), list with each budget's
//! spend and reservations in its current period (`GET`), read or remove
//! one (`GET` / `DELETE /admin/budgets/{scope}/{target}`).
//!
//! A budget belongs to a team for the role check: a team budget to the
//! team it names, a key budget to its key's team (from the `keys` table);
//! a tenant budget, or a config key's, to none (admins only). Every
//! change is audited (`budget.changed`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::AdminCaller;
use crate::audit::{actions, AuditEvent, AuditOutcome};
use crate::auth::Access;
use crate::budget::{book, Budget, Budgets, Period, Scope};
use crate::error::ApiError;
use crate::state::AppState;
use crate::util::unix_now_ms;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/budgets", post(upsert).get(list))
        .route("/admin/budgets/{scope}/{target}", get(read).delete(remove))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    scope: String,
    target: String,
    amount: f64,
    currency: Option<String>,
    period: String,
    alert_thresholds: Option<Vec<u32>>,
}

async fn upsert(
    State(state): State<AppState>,
    caller: AdminCaller,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: BudgetBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_body(format!(
            "The body must be a JSON budget {{scope, target, amount, period, currency?, \
             alert_thresholds?}}: {e}"
        ))
    })?;
    let budgets = &state.budgets;
    let budget = validated(body, budgets)?;
    let team = team_of(budgets, &budget).await?;
    caller.allow(Access::Write {
        team: team.as_deref(),
    })?;
    book::upsert(budgets.store(), &budget)
        .await
        .map_err(store_error)?;
    budgets.invalidate();
    let _ = state.audit.record(
        AuditEvent::new(
            actions::BUDGET_CHANGED,
            caller.0.actor(),
            AuditOutcome::Success,
        )
        .target(budget.name())
        .detail(format!(
            "set to {} {} per {}",
            budget.amount,
            budget.currency,
            budget.period.as_str()
        )),
    );
    let stored = book::get(budgets.store(), budget.scope, &budget.target)
        .await
        .map_err(store_error)?
        .unwrap_or(budget);
    Ok(Json(described(budgets, &stored).await?))
}

async fn list(State(state): State<AppState>, caller: AdminCaller) -> Result<Json<Value>, ApiError> {
    // A caller who may read no budget at all (no admin role) is told so,
    // not shown an empty list; a team admin sees its own team's.
    caller.allow(Access::Read {
        team: caller.0.team.as_deref(),
    })?;
    let budgets = &state.budgets;
    let rows = book::list(budgets.store()).await.map_err(store_error)?;
    let mut data = Vec::with_capacity(rows.len());
    for budget in rows {
        let team = team_of(budgets, &budget).await?;
        if caller
            .allow(Access::Read {
                team: team.as_deref(),
            })
            .is_ok()
        {
            data.push(described(budgets, &budget).await?);
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn read(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path((scope, target)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let budgets = &state.budgets;
    let budget = existing(budgets, &scope, &target).await?;
    let team = team_of(budgets, &budget).await?;
    caller.allow(Access::Read {
        team: team.as_deref(),
    })?;
    Ok(Json(described(budgets, &budget).await?))
}

async fn remove(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path((scope, target)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let budgets = &state.budgets;
    let budget = existing(budgets, &scope, &target).await?;
    let team = team_of(budgets, &budget).await?;
    caller.allow(Access::Write {
        team: team.as_deref(),
    })?;
    book::delete(budgets.store(), budget.scope, &budget.target)
        .await
        .map_err(store_error)?;
    budgets.invalidate();
    let _ = state.audit.record(
        AuditEvent::new(
            actions::BUDGET_CHANGED,
            caller.0.actor(),
            AuditOutcome::Success,
        )
        .target(budget.name())
        .detail("deleted"),
    );
    Ok(Json(json!({"id": budget.name(), "deleted": true})))
}

/// The request's budget, checked field by field.
fn validated(body: BudgetBody, budgets: &Budgets) -> Result<Budget, ApiError> {
    let scope = Scope::parse(&body.scope).ok_or_else(|| {
        ApiError::invalid("scope", "scope must be \"key\", \"team\" or \"tenant\"")
    })?;
    let target = body.target.trim().to_string();
    if target.is_empty() || target.len() > 128 || target.contains('/') {
        return Err(ApiError::invalid(
            "target",
            "target must be a key prefix, a team id or a tenant name (1 to 128 characters, no `/`)",
        ));
    }
    if !body.amount.is_finite() || body.amount <= 0.0 {
        return Err(ApiError::invalid(
            "amount",
            "amount must be a positive number",
        ));
    }
    let configured = &budgets.settings().currency;
    let currency = body
        .currency
        .map(|c| c.to_ascii_uppercase())
        .unwrap_or_else(|| configured.clone());
    if &currency != configured {
        return Err(ApiError::invalid(
            "currency",
            format!(
                "budgets are kept in {configured} ([budgets] currency), the currency prices are \
                 read in; there is no conversion from {currency}"
            ),
        ));
    }
    let period = Period::parse(&body.period).ok_or_else(|| {
        ApiError::invalid(
            "period",
            "period must be \"day\", \"month\" (30 days from creation) or \"calendar_month\"",
        )
    })?;
    if let Some(bad) = body
        .alert_thresholds
        .iter()
        .flatten()
        .find(|t| !(1..=1000).contains(*t))
    {
        return Err(ApiError::invalid(
            "alert_thresholds",
            format!("{bad} is not a percentage in 1..=1000"),
        ));
    }
    let now = unix_now_ms();
    Ok(Budget {
        scope,
        target,
        amount: body.amount,
        currency,
        period,
        alert_thresholds: body.alert_thresholds.map(|mut t| {
            t.sort_unstable();
            t.dedup();
            t
        }),
        created_at: now,
        updated_at: now,
    })
}

async fn existing(budgets: &Budgets, scope: &str, target: &str) -> Result<Budget, ApiError> {
    let not_found = || ApiError::UnknownUrl {
        method: "budget".into(),
        path: format!("{scope}/{target} (no such budget)"),
    };
    let scope = Scope::parse(scope).ok_or_else(not_found)?;
    book::get(budgets.store(), scope, target)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)
}

/// The team whose admins may see and change this budget.
async fn team_of(budgets: &Budgets, budget: &Budget) -> Result<Option<String>, ApiError> {
    match budget.scope {
        Scope::Team => Ok(Some(budget.target.clone())),
        Scope::Key => book::key_team(budgets.store(), &budget.target)
            .await
            .map_err(store_error),
        Scope::Tenant => Ok(None),
    }
}

/// A budget as the API shows it, with its current period's spend.
async fn described(budgets: &Budgets, budget: &Budget) -> Result<Value, ApiError> {
    let (window, spent, reserved) = budgets.usage_of(budget).await?;
    Ok(json!({
        "id": budget.name(),
        "scope": budget.scope.as_str(),
        "target": budget.target,
        "amount": budget.amount,
        "currency": budget.currency,
        "period": budget.period.as_str(),
        "alert_thresholds": budget
            .alert_thresholds
            .clone()
            .unwrap_or_else(|| budgets.settings().alert_thresholds.clone()),
        "period_start_ms": window.start_ms,
        "period_end_ms": window.end_ms,
        "spent": spent,
        "reserved": reserved,
        "remaining": (budget.amount - spent - reserved).max(0.0),
        "created_at": budget.created_at,
        "updated_at": budget.updated_at,
    }))
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "budget store query failed");
    ApiError::StoreUnavailable("the budget store")
}
