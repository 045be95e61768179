//! The store's migrations: SQL files compiled into the binary, applied in
//! order at start, each once. Two instances starting together against one
//! PostgreSQL take an advisory lock, so only one applies them.

use super::{Backend, Store, StoreError};

/// (version, name, SQL). Append only: an applied migration never changes.
/// Versions are spaced by feature so parallel work does not collide.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "governance",
        include_str!("migrations/0001_governance.sql"),
    ),
    (
        14,
        "stream_policy",
        include_str!("migrations/0014_stream_policy.sql"),
    ),
    (15, "sessions", include_str!("migrations/0015_sessions.sql")),
    (
        18,
        "spend_indexes",
        include_str!("migrations/0018_spend_indexes.sql"),
    ),
    (
        19,
        "stream_guard",
        include_str!("migrations/0019_stream_guard.sql"),
    ),
    (
        20,
        "regulated",
        include_str!("migrations/0020_regulated.sql"),
    ),
];

/// Arbitrary, fixed: the advisory lock's key for migrations.
const MIGRATION_LOCK: i64 = 0x5_11CE_0001;

pub(super) async fn run(store: &Store) -> Result<(), StoreError> {
    let mut conn = store.pool().acquire().await?;
    if store.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply_pending(&mut conn, store.backend()).await;
    if store.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply_pending(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
         version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    // SQLite has no advisory lock: an immediate transaction takes the write
    // lock first, so a second process starting at once waits, then finds
    // the migration applied.
    let begin = match backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    for &(version, name, sql) in MIGRATIONS {
        let failed = |source| StoreError::Migration {
            version,
            name,
            source,
        };
        sqlx::raw_sql(begin)
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        let applied = apply_one(conn, version, name, sql).await;
        let end = if matches!(applied, Ok(true)) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let closed = sqlx::raw_sql(end).execute(&mut *conn).await;
        if applied.map_err(failed)? {
            closed.map_err(failed)?;
            tracing::info!(version, name, "store migration applied");
        }
    }
    Ok(())
}

/// Applies one migration inside the open transaction unless it already is;
/// `Ok(true)` when it was applied now.
async fn apply_one(
    conn: &mut sqlx::AnyConnection,
    version: i64,
    name: &str,
    sql: &str,
) -> Result<bool, sqlx::Error> {
    let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations WHERE version = $1")
        .bind(version)
        .fetch_one(&mut *conn)
        .await?;
    if done > 0 {
        return Ok(false);
    }
    sqlx::raw_sql(sql).execute(&mut *conn).await?;
    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
        .bind(version)
        .bind(name)
        .bind(crate::util::unix_now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(true)
}
