//! Reports over the spend log: totals grouped by key, team, model or
//! deployment, and the savings report (what cache hits and locally served
//! requests would have cost at the reference cloud price, against what
//! was spent). Both take a time range and, for a team admin, a team.

use serde::Serialize;
use sqlx::Row;

use crate::store::{Store, StoreError};

/// What `/admin/spend` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    Model,
    Deployment,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "key" => Some(Self::Key),
            "team" => Some(Self::Team),
            "model" => Some(Self::Model),
            "deployment" => Some(Self::Deployment),
            _ => None,
        }
    }

    /// The column, from this fixed list only (never from the request).
    fn column(self) -> &'static str {
        match self {
            Self::Key => "key_prefix",
            Self::Team => "team",
            Self::Model => "model",
            Self::Deployment => "deployment",
        }
    }
}

/// `[from_ms, to_ms)`, and optionally one team only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub from_ms: i64,
    pub to_ms: i64,
    pub team: Option<String>,
}

impl Scope {
    fn filter(&self) -> &'static str {
        if self.team.is_some() {
            "WHERE at_ms >= $1 AND at_ms < $2 AND team = $3"
        } else {
            "WHERE at_ms >= $1 AND at_ms < $2"
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    /// `null` for requests without one (no virtual key, no team, a cache hit's deployment).
    pub group: Option<String>,
    pub requests: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost: f64,
}

/// Totals per group, the most expensive first.
pub async fn by_group(
    store: &Store,
    group_by: GroupBy,
    scope: &Scope,
) -> Result<Vec<GroupRow>, StoreError> {
    let column = group_by.column();
    let sql = format!(
        "SELECT {column}, COUNT(*), CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT), \
         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION) \
         FROM spend {} GROUP BY {column} ORDER BY 5 DESC, 1",
        scope.filter()
    );
    let mut query = sqlx::query(&sql).bind(scope.from_ms).bind(scope.to_ms);
    if let Some(team) = &scope.team {
        query = query.bind(team.clone());
    }
    let rows = query.fetch_all(store.pool()).await?;
    rows.iter()
        .map(|row| {
            Ok(GroupRow {
                group: row.try_get(0)?,
                requests: row.try_get(1)?,
                tokens_in: row.try_get(2)?,
                tokens_out: row.try_get(3)?,
                cost: row.try_get(4)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Requests of one kind and what they would have cost at the reference price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Avoided {
    pub requests: i64,
    pub reference_cost: f64,
    /// What they did cost (0 for cache hits; a local deployment's own price).
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Savings {
    pub requests: i64,
    /// Every request at the reference cloud price.
    pub reference_cost: f64,
    /// What every request did cost.
    pub spent: f64,
    pub cache_hits: Avoided,
    pub local: Avoided,
    /// What cache hits and local requests would have cost at the reference
    /// price, less what they did cost.
    pub saved: f64,
    /// `saved` as a share of `reference_cost` (0 when that is 0).
    pub saved_pct: f64,
}

pub async fn savings(store: &Store, scope: &Scope) -> Result<Savings, StoreError> {
    let sql = format!(
        "SELECT COUNT(*), \
         CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(reference_cost), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(cache_hit), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN cache_hit = 1 THEN reference_cost ELSE 0 END), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(CASE WHEN cache_hit = 1 THEN cost ELSE 0 END), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(local), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN local = 1 THEN reference_cost ELSE 0 END), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(CASE WHEN local = 1 THEN cost ELSE 0 END), 0) AS DOUBLE PRECISION) \
         FROM spend {}",
        scope.filter()
    );
    let mut query = sqlx::query(&sql).bind(scope.from_ms).bind(scope.to_ms);
    if let Some(team) = &scope.team {
        query = query.bind(team.clone());
    }
    let row = query.fetch_one(store.pool()).await?;
    let cache_hits = Avoided {
        requests: row.try_get(3)?,
        reference_cost: row.try_get(4)?,
        cost: row.try_get(5)?,
    };
    let local = Avoided {
        requests: row.try_get(6)?,
        reference_cost: row.try_get(7)?,
        cost: row.try_get(8)?,
    };
    let reference_cost: f64 = row.try_get(2)?;
    let saved = cache_hits.reference_cost + local.reference_cost - cache_hits.cost - local.cost;
    Ok(Savings {
        requests: row.try_get(0)?,
        reference_cost,
        spent: row.try_get(1)?,
        saved,
        saved_pct: if reference_cost > 0.0 {
            saved / reference_cost * 100.0
        } else {
            0.0
        },
        cache_hits,
        local,
    })
}
