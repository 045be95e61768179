//! Traffic figures read from the spend log for the admin console: requests
//! and their rate, latency percentiles, cache hit rate, spend, a time series
//! in fixed buckets, and the cache's share per model. The spend log has
//! one row per generation request from every instance, so these figures
//! cover the whole deployment, not one process.

use serde::Serialize;
use sqlx::Row;

use super::report::Scope;
use crate::store::{Store, StoreError};

/// Requests in a window and how they went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Traffic {
    pub requests: i64,
    /// Requests that did not complete (failed or disconnected).
    pub errors: i64,
    pub per_second: f64,
    pub cache_hits: i64,
    /// `cache_hits / requests` (0 with no requests).
    pub cache_hit_rate: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cached_tokens: i64,
    pub cost: f64,
    pub reference_cost: f64,
    /// End-to-end latency percentiles in milliseconds; `None` with no requests.
    pub latency_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// The bucket's start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    pub requests: i64,
    pub cache_hits: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost: f64,
    pub reference_cost: f64,
}

/// The cache's share of one model's requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheRow {
    pub model: String,
    pub requests: i64,
    pub cache_hits: i64,
    pub cached_tokens: i64,
    /// What the hits would have cost at the reference price.
    pub saved: f64,
}

fn filter(scope: &Scope) -> &'static str {
    if scope.team.is_some() {
        "WHERE at_ms >= $1 AND at_ms < $2 AND team = $3"
    } else {
        "WHERE at_ms >= $1 AND at_ms < $2"
    }
}

fn bind<'q>(
    sql: &'q str,
    scope: &Scope,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql).bind(scope.from_ms).bind(scope.to_ms);
    if let Some(team) = &scope.team {
        query = query.bind(team.clone());
    }
    query
}

/// Totals and latency percentiles over the scope's window.
pub async fn traffic(store: &Store, scope: &Scope) -> Result<Traffic, StoreError> {
    let sql = format!(
        "SELECT COUNT(*), \
         CAST(COALESCE(SUM(CASE WHEN status = 'completed' THEN 0 ELSE 1 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cache_hit), 0) AS BIGINT), \
         CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT), \
         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(reference_cost), 0) AS DOUBLE PRECISION) \
         FROM spend {}",
        filter(scope)
    );
    let row = bind(&sql, scope).fetch_one(store.pool()).await?;
    let requests: i64 = row.try_get(0)?;
    let cache_hits: i64 = row.try_get(2)?;
    let seconds = ((scope.to_ms - scope.from_ms) as f64 / 1000.0).max(1.0);
    Ok(Traffic {
        requests,
        errors: row.try_get(1)?,
        per_second: requests as f64 / seconds,
        cache_hits,
        cache_hit_rate: if requests > 0 {
            cache_hits as f64 / requests as f64
        } else {
            0.0
        },
        tokens_in: row.try_get(3)?,
        tokens_out: row.try_get(4)?,
        cached_tokens: row.try_get(5)?,
        cost: row.try_get(6)?,
        reference_cost: row.try_get(7)?,
        latency_ms: latency(store, scope, requests).await?,
    })
}

/// The nearest-rank percentiles, one indexed row each (no rows are
/// carried to the process however many the window holds).
async fn latency(
    store: &Store,
    scope: &Scope,
    requests: i64,
) -> Result<Option<Percentiles>, StoreError> {
    if requests == 0 {
        return Ok(None);
    }
    let sql = format!(
        "SELECT latency_ms FROM spend {} ORDER BY latency_ms LIMIT 1 OFFSET {}",
        filter(scope),
        if scope.team.is_some() { "$4" } else { "$3" }
    );
    let mut at = [0i64; 3];
    for (slot, pct) in at.iter_mut().zip([50i64, 90, 99]) {
        // Nearest rank: the smallest value with at least pct% at or below it.
        let rank = ((requests * pct + 99) / 100).clamp(1, requests);
        let row = bind(&sql, scope)
            .bind(rank - 1)
            .fetch_one(store.pool())
            .await?;
        *slot = row.try_get(0)?;
    }
    let [p50, p90, p99] = at;
    Ok(Some(Percentiles { p50, p90, p99 }))
}

/// The window in buckets of `bucket_ms`, oldest first; empty buckets are
/// left out (the console draws them as zero).
pub async fn series(
    store: &Store,
    scope: &Scope,
    bucket_ms: i64,
) -> Result<Vec<Bucket>, StoreError> {
    let bucket_ms = bucket_ms.max(1000);
    // The bucket size is a number of this module's choosing, never text
    // from the request.
    let sql = format!(
        "SELECT CAST(at_ms / {bucket_ms} AS BIGINT) AS bucket, COUNT(*), \
         CAST(COALESCE(SUM(cache_hit), 0) AS BIGINT), \
         CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT), \
         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(reference_cost), 0) AS DOUBLE PRECISION) \
         FROM spend {} GROUP BY bucket ORDER BY bucket",
        filter(scope)
    );
    let rows = bind(&sql, scope).fetch_all(store.pool()).await?;
    rows.iter()
        .map(|row| {
            let bucket: i64 = row.try_get(0)?;
            Ok(Bucket {
                start_ms: bucket * bucket_ms,
                requests: row.try_get(1)?,
                cache_hits: row.try_get(2)?,
                tokens_in: row.try_get(3)?,
                tokens_out: row.try_get(4)?,
                cost: row.try_get(5)?,
                reference_cost: row.try_get(6)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Per model: requests, cache hits, cached prompt tokens, what hits saved.
pub async fn cache_by_model(store: &Store, scope: &Scope) -> Result<Vec<CacheRow>, StoreError> {
    let sql = format!(
        "SELECT model, COUNT(*), CAST(COALESCE(SUM(cache_hit), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN cache_hit = 1 THEN reference_cost - cost ELSE 0 END), 0) \
         AS DOUBLE PRECISION) \
         FROM spend {} GROUP BY model ORDER BY 2 DESC, 1",
        filter(scope)
    );
    let rows = bind(&sql, scope).fetch_all(store.pool()).await?;
    rows.iter()
        .map(|row| {
            Ok(CacheRow {
                model: row.try_get(0)?,
                requests: row.try_get(1)?,
                cache_hits: row.try_get(2)?,
                cached_tokens: row.try_get(3)?,
                saved: row.try_get(4)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::{writer, SpendRow};
    use crate::store::testing;

    fn row(i: i64, at_ms: i64, team: &str, cache_hit: bool) -> SpendRow {
        SpendRow {
            request_id: format!("stats-{i}"),
            at_ms,
            key_prefix: Some("k1".into()),
            tenant: "acme".into(),
            team: Some(team.into()),
            user: None,
            model: if cache_hit { "gpt" } else { "small" }.into(),
            deployment: None,
            tokens_in: 10,
            tokens_out: 5,
            cached_tokens: 0,
            cost: if cache_hit { 0.0 } else { 1.0 },
            reference_cost: 2.0,
            cache_hit,
            local: false,
            latency_ms: i,
            status: if i == 10 { "failed_500" } else { "completed" }.into(),
        }
    }

    /// Ten requests with latencies 1..=10 ms, four of them cache hits, in
    /// two one-minute buckets; and one request of another team.
    async fn figures_over_a_window(store: Store) {
        let minute = 60_000;
        let mut rows: Vec<SpendRow> = (1..=10)
            .map(|i| row(i, 10 * minute + (i % 2) * minute, "red", i <= 4))
            .collect();
        rows.push(row(500, 10 * minute, "blue", false));
        writer::insert(&store, &rows).await.unwrap();

        let red = Scope {
            from_ms: 10 * minute,
            to_ms: 12 * minute,
            team: Some("red".into()),
        };
        let t = traffic(&store, &red).await.unwrap();
        assert_eq!(t.requests, 10);
        assert_eq!(t.errors, 1);
        assert_eq!(t.cache_hits, 4);
        assert!((t.cache_hit_rate - 0.4).abs() < 1e-9);
        assert!((t.per_second - 10.0 / 120.0).abs() < 1e-9);
        assert!((t.cost - 6.0).abs() < 1e-9);
        assert_eq!(
            t.latency_ms,
            Some(Percentiles {
                p50: 5,
                p90: 9,
                p99: 10
            })
        );
        let everyone = Scope {
            team: None,
            ..red.clone()
        };
        let t = traffic(&store, &everyone).await.unwrap();
        assert_eq!(t.requests, 11);
        assert_eq!(t.latency_ms.map(|l| l.p99), Some(500));

        let buckets = series(&store, &red, minute).await.unwrap();
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].start_ms, 10 * minute);
        assert_eq!(buckets[0].requests, 5);
        assert_eq!(buckets[1].start_ms, 11 * minute);
        assert_eq!(buckets[1].requests, 5);
        assert_eq!(buckets[0].cache_hits + buckets[1].cache_hits, 4);

        let cache = cache_by_model(&store, &red).await.unwrap();
        let gpt = cache.iter().find(|r| r.model == "gpt").unwrap();
        assert_eq!((gpt.requests, gpt.cache_hits), (4, 4));
        assert!((gpt.saved - 8.0).abs() < 1e-9);

        let empty = Scope {
            from_ms: 0,
            to_ms: 1,
            team: None,
        };
        let t = traffic(&store, &empty).await.unwrap();
        assert_eq!((t.requests, t.latency_ms), (0, None));
        assert!(series(&store, &empty, minute).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sqlite_traffic_percentiles_series_and_cache_share() {
        let (store, _dir) = testing::sqlite().await;
        figures_over_a_window(store).await;
    }

    #[tokio::test]
    async fn postgres_traffic_percentiles_series_and_cache_share() {
        figures_over_a_window(testing::postgres().await).await;
    }
}
