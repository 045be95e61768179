//! The budgets' rows in the store, and what the budget stage reads beside
//! them: the spend of a period (to rebuild lost counters), a key's team
//! (whose admin may touch the key's budget), and the alerts already sent.
//! Portable SQL only: the same queries run on SQLite and PostgreSQL.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::period::Period;
use crate::store::{Store, StoreError};

/// What a budget applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A virtual key (target: its prefix) or a config key (target: its tenant).
    Key,
    Team,
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::Tenant => "tenant",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Key, Self::Team, Self::Tenant]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One row of `budgets`.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub scope: Scope,
    pub target: String,
    pub amount: f64,
    pub currency: String,
    pub period: Period,
    /// Percentages; `None`: the configured ones.
    pub alert_thresholds: Option<Vec<u32>>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Budget {
    /// `scope/target`, as the admin API and the audit name it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.scope.as_str(), self.target)
    }
}

const COLUMNS: &str =
    "scope, target, amount, currency, period, alert_thresholds, created_at, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Option<Budget>, sqlx::Error> {
    let scope: String = row.try_get("scope")?;
    let period: String = row.try_get("period")?;
    let thresholds: Option<String> = row.try_get("alert_thresholds")?;
    // A row some other version wrote with a scope or period this one does
    // not know is skipped (and logged), never a failed request.
    let (Some(scope), Some(period)) = (Scope::parse(&scope), Period::parse(&period)) else {
        tracing::warn!(
            scope,
            period,
            "budget row with an unknown scope or period skipped"
        );
        return Ok(None);
    };
    Ok(Some(Budget {
        scope,
        target: row.try_get("target")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        period,
        alert_thresholds: thresholds.and_then(|t| serde_json::from_str(&t).ok()),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

/// Every budget.
pub async fn list(store: &Store) -> Result<Vec<Budget>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM budgets ORDER BY scope, target"
    ))
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.extend(from_row(row)?);
    }
    Ok(out)
}

pub async fn get(store: &Store, scope: Scope, target: &str) -> Result<Option<Budget>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM budgets WHERE scope = $1 AND target = $2"
    ))
    .bind(scope.as_str())
    .bind(target)
    .fetch_optional(store.pool())
    .await?;
    Ok(match row {
        Some(row) => from_row(&row)?,
        None => None,
    })
}

/// Creates or replaces a budget; a replaced one keeps its creation time
/// (a rolling month stays anchored where it was).
pub async fn upsert(store: &Store, budget: &Budget) -> Result<(), StoreError> {
    let thresholds = budget
        .alert_thresholds
        .as_ref()
        .map(|t| serde_json::to_string(t).unwrap_or_default());
    sqlx::query(
        "INSERT INTO budgets (scope, target, amount, currency, period, alert_thresholds, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (scope, target) DO UPDATE SET amount = excluded.amount, \
         currency = excluded.currency, period = excluded.period, \
         alert_thresholds = excluded.alert_thresholds, updated_at = excluded.updated_at",
    )
    .bind(budget.scope.as_str())
    .bind(&budget.target)
    .bind(budget.amount)
    .bind(&budget.currency)
    .bind(budget.period.as_str())
    .bind(thresholds)
    .bind(budget.created_at)
    .bind(budget.updated_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Whether a row was deleted.
pub async fn delete(store: &Store, scope: Scope, target: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM budgets WHERE scope = $1 AND target = $2")
        .bind(scope.as_str())
        .bind(target)
        .execute(store.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The team a virtual key belongs to (`None`: no such key, or no team).
pub async fn key_team(store: &Store, prefix: &str) -> Result<Option<String>, StoreError> {
    let team: Option<Option<String>> =
        sqlx::query_scalar("SELECT team FROM keys WHERE prefix = $1")
            .bind(prefix)
            .fetch_optional(store.pool())
            .await?;
    Ok(team.flatten())
}

/// What the spend log holds for a budget's target since `since_ms`: the
/// rebuild of a counter that Redis lost. A key budget's target is a
/// virtual key's prefix or, for a config key, its tenant (whose rows carry
/// no prefix).
pub async fn spent_since(
    store: &Store,
    scope: Scope,
    target: &str,
    since_ms: i64,
) -> Result<f64, StoreError> {
    let filter = match scope {
        Scope::Key => "(key_prefix = $1 OR (key_prefix IS NULL AND tenant = $1))",
        Scope::Team => "team = $1",
        Scope::Tenant => "tenant = $1",
    };
    let sum: Option<f64> = sqlx::query_scalar(&format!(
        "SELECT SUM(cost) FROM spend WHERE {filter} AND at_ms >= $2"
    ))
    .bind(target)
    .bind(since_ms)
    .fetch_one(store.pool())
    .await?;
    Ok(sum.unwrap_or(0.0))
}

/// Claims an alert: `true` only for the one caller (of every instance)
/// whose insert made the row; that one sends it.
pub async fn claim_alert(
    store: &Store,
    budget: &Budget,
    period_start: i64,
    threshold_pct: u32,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO budget_alerts (scope, target, period_start, threshold_pct, sent_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(budget.scope.as_str())
    .bind(&budget.target)
    .bind(period_start)
    .bind(i64::from(threshold_pct))
    .bind(now_ms)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}
