//! The durable layer: the `sessions` and `session_items` tables of the
//! `[store]` database (migration 0015), the same SQL on SQLite and
//! PostgreSQL.
//!
//! Every transaction writes first: an append opens with the `UPDATE` that
//! checks and bumps the version (on PostgreSQL it locks the row, so a
//! concurrent append with the same expected version waits, then finds the
//! version moved and is refused; on SQLite the first write takes the
//! database's write lock), so no transaction reads and then upgrades to a
//! write, which SQLite would refuse under contention. The idempotency
//! check reads before the transaction and again after a failed insert.

use serde_json::Value;
use sqlx::{AnyPool, Row};

use super::{
    Appended, Erase, Item, Kind, NewItem, NewSession, Removed, Session, SessionError, SessionStore,
    Snapshot,
};
use crate::store::Store;
use crate::util::unix_now_ms;

/// Ids per `IN (...)` list: well under SQLite's and PostgreSQL's bind limits.
const IDS_PER_STATEMENT: usize = 200;

/// The durable layer; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Durable {
    store: Store,
}

impl Durable {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn pool(&self) -> &AnyPool {
        self.store.pool()
    }

    /// The stored items of `id` with these idempotency keys, if the
    /// session is the tenant's.
    async fn existing(
        &self,
        tenant: &str,
        id: &str,
        keys: &[&str],
    ) -> Result<Vec<Item>, SessionError> {
        let mut found = Vec::new();
        for chunk in keys.chunks(IDS_PER_STATEMENT) {
            let list = placeholders(3, chunk.len());
            let sql = format!(
                "SELECT i.seq, i.item_id, i.idempotency_key, i.body FROM session_items i \
                 JOIN sessions s ON s.id = i.session_id \
                 WHERE i.session_id = $1 AND s.tenant = $2 AND i.idempotency_key IN ({list}) \
                 ORDER BY i.seq"
            );
            let mut query = sqlx::query(&sql).bind(id).bind(tenant);
            for key in chunk {
                query = query.bind(*key);
            }
            for row in query.fetch_all(self.pool()).await? {
                found.push(item_of(&row)?);
            }
        }
        Ok(found)
    }

    /// Why a guarded change found no row: the session is gone, or its
    /// version moved.
    async fn refusal(&self, tenant: &str, id: &str, expected: Option<i64>) -> SessionError {
        let current: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT version FROM sessions WHERE id = $1 AND tenant = $2")
                .bind(id)
                .bind(tenant)
                .fetch_optional(self.pool())
                .await;
        match (current, expected) {
            (Err(e), _) => SessionError::Store(e),
            (Ok(Some(current)), Some(expected)) => SessionError::Stale {
                id: id.to_string(),
                expected,
                current,
            },
            (Ok(_), _) => SessionError::NotFound(id.to_string()),
        }
    }

    /// Deletes the items of these sessions (already deleted themselves).
    async fn delete_items_of(
        conn: &mut sqlx::AnyConnection,
        ids: &[String],
    ) -> Result<(), sqlx::Error> {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM session_items WHERE session_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Deletes the sessions `DELETE ... WHERE <filter>` selects (then their
    /// items) in one transaction. The sessions go first: a session touched
    /// meanwhile no longer matches, and keeps its items.
    async fn delete_where(
        &self,
        filter: &str,
        binds: &[Bind<'_>],
    ) -> Result<Vec<Removed>, SessionError> {
        let mut tx = self.pool().begin().await?;
        let sql = format!("DELETE FROM sessions WHERE {filter} RETURNING id, tenant");
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(t) => query.bind(*t),
                Bind::Int(i) => query.bind(*i),
            };
        }
        let removed = query.fetch_all(&mut *tx).await?;
        let ids: Vec<String> = removed.iter().map(|(id, _)| id.clone()).collect();
        Self::delete_items_of(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(removed
            .into_iter()
            .map(|(id, tenant)| Removed { id, tenant })
            .collect())
    }
}

enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

/// `$from, $from+1, ...` for `n` values.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_of(text: &str) -> Result<Value, SessionError> {
    serde_json::from_str(text).map_err(|e| SessionError::Corrupt(e.to_string()))
}

fn text_of(value: &Value) -> Result<String, SessionError> {
    serde_json::to_string(value).map_err(|e| SessionError::Corrupt(e.to_string()))
}

fn item_of(row: &sqlx::any::AnyRow) -> Result<Item, SessionError> {
    Ok(Item {
        seq: row.try_get("seq")?,
        id: row.try_get("item_id")?,
        key: row.try_get("idempotency_key")?,
        body: json_of(&row.try_get::<String, _>("body")?)?,
    })
}

fn session_of(row: &sqlx::any::AnyRow) -> Result<Session, SessionError> {
    Ok(Session {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        user: row.try_get("user_id")?,
        kind: Kind::parse(&row.try_get::<String, _>("kind")?)?,
        version: row.try_get("version")?,
        last_seq: row.try_get("last_seq")?,
        parent: row.try_get("parent")?,
        conversation: row.try_get("conversation")?,
        body: json_of(&row.try_get::<String, _>("body")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts items numbered from `first_seq`.
async fn insert_items(
    conn: &mut sqlx::AnyConnection,
    session: &str,
    first_seq: i64,
    items: &[NewItem],
    now: i64,
) -> Result<Vec<Item>, SessionError> {
    let mut stored = Vec::with_capacity(items.len());
    for (seq, item) in (first_seq..).zip(items) {
        sqlx::query(
            "INSERT INTO session_items (session_id, seq, item_id, idempotency_key, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session)
        .bind(seq)
        .bind(item.id.as_str())
        .bind(item.key.as_str())
        .bind(text_of(&item.body)?)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        stored.push(Item {
            seq,
            id: item.id.clone(),
            key: item.key.clone(),
            body: item.body.clone(),
        });
    }
    Ok(stored)
}

const SESSION_COLUMNS: &str = "id, tenant, user_id, kind, version, last_seq, parent, \
                               conversation, body, created_at, updated_at";

impl SessionStore for Durable {
    async fn create(&self, new: NewSession, items: Vec<NewItem>) -> Result<Snapshot, SessionError> {
        let now = unix_now_ms();
        let last_seq = i64::try_from(items.len()).unwrap_or(i64::MAX);
        let NewSession {
            id,
            tenant,
            user,
            kind,
            parent,
            conversation,
            body,
            // Sealed (or not) by the layer above.
            seal: _,
        } = new;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, tenant, user_id, kind, version, last_seq, parent, \
             conversation, body, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .bind(user.clone())
        .bind(kind.as_str())
        .bind(last_seq)
        .bind(parent.clone())
        .bind(conversation.clone())
        .bind(text_of(&body)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let items = insert_items(&mut tx, &id, 1, &items, now).await?;
        tx.commit().await?;
        Ok(Snapshot {
            session: Session {
                id,
                tenant,
                user,
                kind,
                version: 1,
                last_seq,
                parent,
                conversation,
                body,
                created_at: now,
                updated_at: now,
            },
            items,
        })
    }

    async fn load(&self, tenant: &str, id: &str) -> Result<Snapshot, SessionError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND tenant = $2");
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(tenant)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let session = session_of(&row)?;
        // Items appended after the row was read belong to a later version.
        let rows = sqlx::query(
            "SELECT seq, item_id, idempotency_key, body FROM session_items \
             WHERE session_id = $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(id)
        .bind(session.last_seq)
        .fetch_all(self.pool())
        .await?;
        let items = rows.iter().map(item_of).collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { session, items })
    }

    async fn append(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        items: Vec<NewItem>,
    ) -> Result<Appended, SessionError> {
        if items.is_empty() {
            return Err(SessionError::Empty);
        }
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        let n = i64::try_from(items.len()).unwrap_or(i64::MAX);
        let now = unix_now_ms();
        let mut tx = self.pool().begin().await?;
        let bumped: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE sessions SET version = version + 1, last_seq = last_seq + $1, updated_at = $2 \
             WHERE id = $3 AND tenant = $4 AND ($5 < 0 OR version = $5) \
             RETURNING version, last_seq",
        )
        .bind(n)
        .bind(now)
        .bind(id)
        .bind(tenant)
        .bind(expected.unwrap_or(-1))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((version, last_seq)) = bumped else {
            tx.rollback().await?;
            // A retry of an append that was written moved the version
            // itself: answer it as written.
            return match self.duplicate(tenant, id, &keys).await? {
                Some(done) => Ok(done),
                None => Err(self.refusal(tenant, id, expected).await),
            };
        };
        match insert_items(&mut tx, id, last_seq - n + 1, &items, now).await {
            Ok(stored) => {
                tx.commit().await?;
                Ok(Appended {
                    version,
                    last_seq,
                    updated_at: now,
                    items: stored,
                    duplicate: false,
                })
            }
            Err(err) => {
                tx.rollback().await?;
                // The same items, written before (a retry without a
                // version) or by a concurrent retry?
                match self.duplicate(tenant, id, &keys).await? {
                    Some(done) => Ok(done),
                    None => Err(err),
                }
            }
        }
    }

    async fn update(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        body: Value,
    ) -> Result<i64, SessionError> {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE sessions SET version = version + 1, body = $1, updated_at = $2 \
             WHERE id = $3 AND tenant = $4 AND ($5 < 0 OR version = $5) RETURNING version",
        )
        .bind(text_of(&body)?)
        .bind(unix_now_ms())
        .bind(id)
        .bind(tenant)
        .bind(expected.unwrap_or(-1))
        .fetch_optional(self.pool())
        .await?;
        match version {
            Some(v) => Ok(v),
            None => Err(self.refusal(tenant, id, expected).await),
        }
    }

    async fn delete_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> Result<i64, SessionError> {
        let mut tx = self.pool().begin().await?;
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE sessions SET version = version + 1, updated_at = $1 \
             WHERE id = $2 AND tenant = $3 RETURNING version",
        )
        .bind(unix_now_ms())
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(version) = version else {
            tx.rollback().await?;
            return Err(SessionError::NotFound(id.to_string()));
        };
        let deleted =
            sqlx::query("DELETE FROM session_items WHERE session_id = $1 AND item_id = $2")
                .bind(id)
                .bind(item_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if deleted == 0 {
            tx.rollback().await?;
            return Err(SessionError::ItemNotFound(item_id.to_string()));
        }
        tx.commit().await?;
        Ok(version)
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<(), SessionError> {
        let ids = self
            .delete_where(
                "id = $1 AND tenant = $2",
                &[Bind::Text(id), Bind::Text(tenant)],
            )
            .await?;
        if ids.is_empty() {
            return Err(SessionError::NotFound(id.to_string()));
        }
        Ok(())
    }

    async fn erase(&self, scope: Erase<'_>) -> Result<Vec<Removed>, SessionError> {
        match scope {
            Erase::Tenant(tenant) => {
                self.delete_where("tenant = $1", &[Bind::Text(tenant)])
                    .await
            }
            Erase::User {
                tenant: Some(tenant),
                user,
            } => {
                self.delete_where(
                    "tenant = $1 AND user_id = $2",
                    &[Bind::Text(tenant), Bind::Text(user)],
                )
                .await
            }
            Erase::User { tenant: None, user } => {
                self.delete_where("user_id = $1", &[Bind::Text(user)]).await
            }
        }
    }

    async fn purge_before(&self, cutoff_ms: i64) -> Result<Vec<Removed>, SessionError> {
        self.delete_where("updated_at < $1", &[Bind::Int(cutoff_ms)])
            .await
    }
}

impl Durable {
    /// The answer to a retried append whose items are all stored already
    /// (with the session's current version); `None` when none is.
    async fn duplicate(
        &self,
        tenant: &str,
        id: &str,
        keys: &[&str],
    ) -> Result<Option<Appended>, SessionError> {
        let found = self.existing(tenant, id, keys).await?;
        if found.is_empty() {
            return Ok(None);
        }
        if found.len() != keys.len() {
            return Err(SessionError::PartialDuplicate);
        }
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT version, last_seq, updated_at FROM sessions WHERE id = $1 AND tenant = $2",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(self.pool())
        .await?;
        let (version, last_seq, updated_at) =
            row.ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        Ok(Some(Appended {
            version,
            last_seq,
            updated_at,
            items: found,
            duplicate: true,
        }))
    }
}
