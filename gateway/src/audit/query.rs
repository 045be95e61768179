//! Reading the audit log back from the store for the admin console: the
//! records that match a filter, newest first, a page at a time; and the
//! count of each action's outcomes over a window (guard blocks, refusals).

use serde::Serialize;
use sqlx::Row;

use crate::store::{Store, StoreError};

/// The most records one page may hold.
pub const MAX_PAGE: i64 = 500;

/// Which records to read. Text filters are exact, except `action`, which
/// also takes a family (`key.` matches `key.created`, `key.revoked`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    pub target: Option<String>,
    /// `[from_ms, to_ms)`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only records older than this sequence number (the next page).
    pub before_seq: Option<i64>,
    /// At most this many (clamped to `1..=MAX_PAGE`).
    pub limit: i64,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub request_id: Option<String>,
    pub actor: String,
    pub tenant: Option<String>,
    pub source: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

/// How many records of one action had one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeCount {
    pub action: String,
    pub outcome: String,
    pub count: i64,
}

/// `LIKE` escapes for a family prefix typed by a person.
fn like_prefix(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The records matching `filter`, newest first.
pub async fn list(store: &Store, filter: &AuditFilter) -> Result<Vec<StoredRecord>, StoreError> {
    // Placeholders are numbered in the order they appear, once each, which
    // both SQLite and PostgreSQL read the same way.
    let mut clauses: Vec<String> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let mut numbers: Vec<i64> = Vec::new();
    let mut next = 1;
    let mut placeholder = || {
        let p = format!("${next}");
        next += 1;
        p
    };
    if let Some(action) = &filter.action {
        if action.ends_with('.') {
            clauses.push(format!("action LIKE {} ESCAPE '\\'", placeholder()));
            texts.push(like_prefix(action));
        } else {
            clauses.push(format!("action = {}", placeholder()));
            texts.push(action.clone());
        }
    }
    for (column, value) in [
        ("actor", &filter.actor),
        ("outcome", &filter.outcome),
        ("target", &filter.target),
    ] {
        if let Some(value) = value {
            clauses.push(format!("{column} = {}", placeholder()));
            texts.push(value.clone());
        }
    }
    for (clause, value) in [
        ("at_ms >=", filter.from_ms),
        ("at_ms <", filter.to_ms),
        ("seq <", filter.before_seq),
    ] {
        if let Some(value) = value {
            clauses.push(format!("{clause} {}", placeholder()));
            numbers.push(value);
        }
    }
    let limit_at = placeholder();
    let filter_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT seq, at_ms, request_id, actor, tenant, source, action, target, outcome, detail \
         FROM audit {filter_sql} ORDER BY seq DESC LIMIT {limit_at}"
    );
    let mut query = sqlx::query(&sql);
    for text in texts {
        query = query.bind(text);
    }
    for number in numbers {
        query = query.bind(number);
    }
    query = query.bind(filter.limit.clamp(1, MAX_PAGE));
    let rows = query.fetch_all(store.pool()).await?;
    rows.iter()
        .map(|row| {
            Ok(StoredRecord {
                seq: row.try_get(0)?,
                at_ms: row.try_get(1)?,
                request_id: row.try_get(2)?,
                actor: row.try_get(3)?,
                tenant: row.try_get(4)?,
                source: row.try_get(5)?,
                action: row.try_get(6)?,
                target: row.try_get(7)?,
                outcome: row.try_get(8)?,
                detail: row.try_get(9)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Per action and outcome, the records in `[from_ms, to_ms)` whose action
/// is one of `actions`.
pub async fn outcomes(
    store: &Store,
    actions: &[&str],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<OutcomeCount>, StoreError> {
    if actions.is_empty() {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = (0..actions.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT action, outcome, COUNT(*) FROM audit \
         WHERE at_ms >= $1 AND at_ms < $2 AND action IN ({}) \
         GROUP BY action, outcome ORDER BY action, outcome",
        listed.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(from_ms).bind(to_ms);
    for action in actions {
        query = query.bind(action.to_string());
    }
    let rows = query.fetch_all(store.pool()).await?;
    rows.iter()
        .map(|row| {
            Ok(OutcomeCount {
                action: row.try_get(0)?,
                outcome: row.try_get(1)?,
                count: row.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{actions, chain, AuditEvent, AuditOutcome, AuditRecord};
    use crate::store::testing;

    fn record(i: i64, action: &'static str, actor: &str, outcome: AuditOutcome) -> AuditRecord {
        AuditRecord::stamp(
            AuditEvent::new(action, actor, outcome)
                .tenant("acme")
                .target(format!("t{i}")),
            1_000 + i,
        )
    }

    async fn filters_pages_and_counts(store: Store) {
        let records = vec![
            record(
                0,
                actions::KEY_CREATED,
                "tenant:admin",
                AuditOutcome::Success,
            ),
            record(
                1,
                actions::KEY_REVOKED,
                "tenant:admin",
                AuditOutcome::Success,
            ),
            record(2, actions::GUARD_DECISION, "key:k1", AuditOutcome::Denied),
            record(3, actions::GUARD_DECISION, "key:k1", AuditOutcome::Success),
            record(4, actions::ADMIN_DENIED, "key:k2", AuditOutcome::Denied),
            record(5, actions::GUARD_DECISION, "key:k2", AuditOutcome::Denied),
        ];
        chain::append(&store, &records).await.unwrap();
        let page = |filter: AuditFilter| {
            let store = store.clone();
            async move {
                list(
                    &store,
                    &AuditFilter {
                        limit: 100,
                        ..filter
                    },
                )
                .await
                .unwrap()
            }
        };

        let all = page(AuditFilter::default()).await;
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        assert_eq!(all[0].target.as_deref(), Some("t5"));

        let keys = page(AuditFilter {
            action: Some("key.".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(keys.len(), 2);
        // `_` is not a wildcard in a family: `ke_.` matches nothing.
        let none = page(AuditFilter {
            action: Some("ke_.".into()),
            ..Default::default()
        })
        .await;
        assert!(none.is_empty());

        let blocked = page(AuditFilter {
            action: Some(actions::GUARD_DECISION.into()),
            outcome: Some("denied".into()),
            actor: Some("key:k1".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[0].at_ms, 1_002);

        let window = page(AuditFilter {
            from_ms: Some(1_001),
            to_ms: Some(1_004),
            ..Default::default()
        })
        .await;
        assert_eq!(window.len(), 3);

        let first = list(
            &store,
            &AuditFilter {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(first.len(), 2);
        let next = page(AuditFilter {
            before_seq: Some(first[1].seq),
            ..Default::default()
        })
        .await;
        assert_eq!(next.len(), 4);
        assert!(next[0].seq < first[1].seq);

        let counts = outcomes(&store, &[actions::GUARD_DECISION], 0, 10_000)
            .await
            .unwrap();
        assert_eq!(
            counts,
            vec![
                OutcomeCount {
                    action: actions::GUARD_DECISION.into(),
                    outcome: "denied".into(),
                    count: 2
                },
                OutcomeCount {
                    action: actions::GUARD_DECISION.into(),
                    outcome: "success".into(),
                    count: 1
                },
            ]
        );
    }

    #[tokio::test]
    async fn sqlite_audit_records_filter_page_and_count() {
        let (store, _dir) = testing::sqlite().await;
        filters_pages_and_counts(store).await;
    }

    #[tokio::test]
    async fn postgres_audit_records_filter_page_and_count() {
        filters_pages_and_counts(testing::postgres().await).await;
    }
}
